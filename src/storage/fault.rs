//! Fault injection for tests: a [`Storage`] that wraps another and fails chosen calls with a chosen error
//! category, so retry and cleanup paths can be proven against real backends (a temp dir, a real S3 server).
//!
//! Calls are counted per [`Op`], starting at 1, over the life of the wrapper (writes are counted across all
//! writers it handed out). A rule `fail(op, nth, times, kind)` makes calls `nth .. nth + times` of `op` fail before
//! they reach the inner storage. An injected `Write` or `Finish` failure leaves the inner writer unfinished;
//! when the caller then drops or aborts the writer, the inner writer's own cleanup runs — exactly what happens
//! after a real error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteStream, ObjectMeta, ObjectWriter, PutOptions, Storage, StorageError};

/// A storage operation that can be faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    PutStream,
    Write,
    Finish,
    Get,
    List,
    Delete,
    Sweep,
}

/// The category of an injected error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    NotFound,
    Auth,
    NoSpace,
    Transient,
    Permanent,
}

#[derive(Debug)]
struct Rule {
    op: Op,
    from: usize,
    times: usize,
    kind: FaultKind,
}

#[derive(Debug, Default)]
struct State {
    rules: Mutex<Vec<Rule>>,
    calls: Mutex<HashMap<Op, usize>>,
}

impl State {
    fn check(&self, target: &str, op: Op, key: &str) -> Result<(), StorageError> {
        let n = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            let c = calls.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rule) = rules
            .iter()
            .find(|r| r.op == op && n >= r.from && n < r.from.saturating_add(r.times))
        else {
            return Ok(());
        };
        let target = target.to_string();
        let message = format!("injected fault: {op:?} call {n}");
        Err(match rule.kind {
            FaultKind::NotFound => StorageError::NotFound {
                target,
                key: key.to_string(),
            },
            FaultKind::Auth => StorageError::Auth { target, message },
            FaultKind::NoSpace => StorageError::NoSpace { target, message },
            FaultKind::Transient => StorageError::Transient { target, message },
            FaultKind::Permanent => StorageError::Permanent { target, message },
        })
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct FaultStorage {
    inner: Arc<dyn Storage>,
    state: Arc<State>,
}

impl FaultStorage {
    pub fn new(inner: Arc<dyn Storage>) -> FaultStorage {
        FaultStorage {
            inner,
            state: Arc::default(),
        }
    }

    /// Make calls `nth .. nth + times` (1-based) of `op` fail with `kind`.
    pub fn fail(&self, op: Op, nth: usize, times: usize, kind: FaultKind) -> &Self {
        self.state
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Rule {
                op,
                from: nth,
                times,
                kind,
            });
        self
    }

    /// How many calls of `op` were made so far (failed ones included).
    pub fn calls(&self, op: Op) -> usize {
        *self
            .state
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&op)
            .unwrap_or(&0)
    }

    fn check(&self, op: Op, key: &str) -> Result<(), StorageError> {
        self.state.check(&self.inner.describe(), op, key)
    }
}

#[async_trait]
impl Storage for FaultStorage {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.check(Op::Put, key)?;
        self.inner.put(key, data).await
    }

    async fn put_stream(
        &self,
        key: &str,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.check(Op::PutStream, key)?;
        let inner = self.inner.put_stream(key, opts).await?;
        Ok(Box::new(FaultWriter {
            inner,
            state: self.state.clone(),
            target: self.inner.describe(),
            key: key.to_string(),
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        self.check(Op::Get, key)?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.check(Op::List, prefix)?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        self.check(Op::Delete, keys.first().map(String::as_str).unwrap_or(""))?;
        self.inner.delete(keys).await
    }

    async fn sweep_incomplete(&self, older_than: Duration) -> Result<usize, StorageError> {
        self.check(Op::Sweep, "")?;
        self.inner.sweep_incomplete(older_than).await
    }

    async fn stale_uploads(&self, older_than: Duration) -> Result<Vec<ObjectMeta>, StorageError> {
        self.check(Op::List, "")?;
        self.inner.stale_uploads(older_than).await
    }
}

struct FaultWriter {
    inner: Box<dyn ObjectWriter>,
    state: Arc<State>,
    target: String,
    key: String,
}

#[async_trait]
impl ObjectWriter for FaultWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.state.check(&self.target, Op::Write, &self.key)?;
        self.inner.write(chunk).await
    }

    async fn finish(self: Box<Self>) -> Result<ObjectMeta, StorageError> {
        // On an injected failure `self.inner` is dropped here, unfinished: its own cleanup must run.
        self.state.check(&self.target, Op::Finish, &self.key)?;
        self.inner.finish().await
    }

    async fn abort(self: Box<Self>) -> Result<(), StorageError> {
        self.inner.abort().await
    }
}
