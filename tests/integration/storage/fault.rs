//! Test wrappers over real backends: [`RetryStorage`] (the retry policy applied to any storage) and fault
//! injection: a [`Storage`] that wraps another and fails chosen calls with a chosen error
//! category, so retry and cleanup paths can be proven against real backends (a temp dir, a real S3 server).
//!
//! Calls are counted per [`Op`], starting at 1, over the life of the wrapper (writes are counted across all
//! writers it handed out). A rule `fail(op, nth, times, kind)` makes calls `nth .. nth + times` of `op` fail before
//! they reach the inner storage. An injected `Write` or `Finish` failure leaves the inner writer unfinished;
//! when the caller then drops or aborts the writer, the inner writer's own cleanup runs — exactly what happens
//! after a real error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use voltar::storage::retry::{retry, Backoff};
use voltar::storage::{ByteStream, ObjectMeta, ObjectWriter, PutOptions, Storage, StorageError};

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

/// The category of an injected error: every category a backend returns, though the tests inject three so far.
#[allow(dead_code)]
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

/// A [`Storage`] that retries the transient failures of another one with [`retry`]: its whole-object calls (`put`,
/// `get`, `list`, `delete`, `sweep_incomplete`, and the *start* of `put_stream`). `check` is retried too, but
/// within the check's own (short) budget instead of the deadline: it runs before a backup quiesces anything, and
/// a target that needs minutes to answer is better skipped than waited for.
///
/// It does not retry `ObjectWriter::write`/`finish`: the bytes of a streamed upload are consumed as they go, so a
/// generic wrapper cannot replay them. Backends that can (S3 parts) retry inside the writer. Do not stack it on
/// the S3 backend: its requests already retry, and stacking multiplies the deadline. (Moved here from
/// `voltar::storage::retry`: only the tests use it.)
#[derive(Debug)]
pub struct RetryStorage {
    inner: Arc<dyn Storage>,
    policy: Backoff,
}

impl RetryStorage {
    pub fn new(inner: Arc<dyn Storage>, policy: Backoff) -> RetryStorage {
        RetryStorage { inner, policy }
    }
}

#[async_trait]
impl Storage for RetryStorage {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        // `Bytes` clones share the buffer: replaying a put costs no copy.
        retry(&self.policy, |_| self.inner.put(key, data.clone())).await
    }

    async fn put_stream(
        &self,
        key: &str,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        retry(&self.policy, |_| self.inner.put_stream(key, opts.clone())).await
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        retry(&self.policy, |_| self.inner.get(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        retry(&self.policy, |_| self.inner.list(prefix)).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        // Deleting is idempotent (a missing key is not an error), so a replay after a lost answer is safe.
        retry(&self.policy, |_| self.inner.delete(keys)).await
    }

    async fn sweep_incomplete(&self, older_than: Duration) -> Result<usize, StorageError> {
        retry(&self.policy, |_| self.inner.sweep_incomplete(older_than)).await
    }

    async fn stale_uploads(&self, older_than: Duration) -> Result<Vec<ObjectMeta>, StorageError> {
        retry(&self.policy, |_| self.inner.stale_uploads(older_than)).await
    }

    async fn check(&self, timeout: Duration) -> Result<(), StorageError> {
        let policy = Backoff {
            deadline: timeout,
            ..self.policy.clone()
        };
        retry(&policy, |remaining| {
            self.inner.check(remaining.max(Duration::from_millis(100)))
        })
        .await
    }
}

/// A storage whose check fails transiently `fails` times, then passes; nothing else is called.
#[derive(Debug)]
struct FlakyCheck {
    fails: u32,
    calls: AtomicU32,
}

#[async_trait]
impl Storage for FlakyCheck {
    fn describe(&self) -> String {
        "flaky".into()
    }
    async fn put(&self, _: &str, _: Bytes) -> Result<(), StorageError> {
        unreachable!()
    }
    async fn put_stream(
        &self,
        _: &str,
        _: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        unreachable!()
    }
    async fn get(&self, _: &str) -> Result<ByteStream, StorageError> {
        unreachable!()
    }
    async fn list(&self, _: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        unreachable!()
    }
    async fn delete(&self, _: &[String]) -> Result<(), StorageError> {
        unreachable!()
    }
    async fn sweep_incomplete(&self, _: Duration) -> Result<usize, StorageError> {
        unreachable!()
    }
    async fn stale_uploads(&self, _: Duration) -> Result<Vec<ObjectMeta>, StorageError> {
        unreachable!()
    }
    async fn check(&self, _: Duration) -> Result<(), StorageError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fails {
            Err(StorageError::Transient {
                target: "t".into(),
                message: "connection reset".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_check_is_retried_within_its_own_budget_not_the_deadline() {
    // Quick retries, a long deadline: the check must end within its own budget, not this.
    let policy = Backoff {
        initial: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        deadline: Duration::from_secs(300),
    };
    let flaky = RetryStorage::new(
        Arc::new(FlakyCheck {
            fails: 2,
            calls: AtomicU32::new(0),
        }),
        policy.clone(),
    );
    flaky.check(Duration::from_secs(5)).await.unwrap();
    let dead = Arc::new(FlakyCheck {
        fails: u32::MAX,
        calls: AtomicU32::new(0),
    });
    let start = Instant::now();
    let e = RetryStorage::new(dead.clone(), policy)
        .check(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(dead.calls.load(Ordering::SeqCst) >= 2);
}
