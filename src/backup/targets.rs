//! A run's targets: open and lock each one, check them all before anything is quiesced, and keep the list of
//! targets the later sources skip (it failed to open, failed its check, or failed while storing a source).

use super::*;
use crate::lock::LockError;

/// The targets of one run, indexed like the request's targets.
pub(super) struct Targets {
    /// The opened store; `None` when the target could not be opened or locked, or failed its check.
    pub(super) stores: Vec<Option<Arc<dyn Storage>>>,
    /// The targets' names, for messages and `SourceReport::target_errors`.
    pub(super) names: Vec<String>,
    /// Target index → why later sources do not write to it.
    pub(super) skip: BTreeMap<usize, String>,
    /// Held for the whole run (dropped with it): one run per target.
    _locks: Vec<TargetLock>,
}

impl Targets {
    /// Open every target and take its lock. A target that cannot be opened fails alone (its row in `rows` says
    /// why); when none can, the run is fatal with the first target's own error (its message names the target).
    pub(super) async fn open(
        env: &Env<'_>,
        targets: &[Target],
        rows: &mut Vec<TargetReport>,
    ) -> Result<Targets, BackupError> {
        let mut stores: Vec<Option<Arc<dyn Storage>>> = Vec::new();
        let mut locks: Vec<TargetLock> = Vec::new();
        let mut first_error: Option<BackupError> = None;
        let mut taken = lock_all(env, targets).await?.into_iter();
        for t in targets {
            let lock = taken.next().expect("one lock result per target");
            let mut tr = TargetReport {
                name: t.name.clone(),
                location: t.name.clone(),
                committed: false,
                error: None,
                prune: None,
                prune_skipped: None,
            };
            match storage::open(t).await {
                Ok(s) => {
                    tr.location = s.describe();
                    match lock {
                        Ok(l) => {
                            locks.push(l);
                            stores.push(Some(s));
                        }
                        Err(e) => {
                            tr.error = Some(e.to_string());
                            stores.push(None);
                            first_error.get_or_insert(BackupError::Lock(e));
                        }
                    }
                }
                Err(e) => {
                    tr.error = Some(e.to_string());
                    stores.push(None);
                    first_error.get_or_insert(BackupError::Storage {
                        target: t.name.clone(),
                        source: e,
                    });
                }
            }
            rows.push(tr);
        }
        if stores.iter().all(Option::is_none) {
            return Err(first_error.unwrap_or(BackupError::NoTarget));
        }
        Ok(Targets {
            stores,
            names: targets.iter().map(|t| t.name.clone()).collect(),
            skip: BTreeMap::new(),
            _locks: locks,
        })
    }

    /// Check every opened target before anything is quiesced, all at once, each within its check-timeout: a
    /// dead, hung or unauthorised target is skipped for the whole run instead of holding containers while it is
    /// retried. Fatal when no target is left (nothing was quiesced) or when the run is interrupted meanwhile.
    pub(super) async fn check(
        &mut self,
        env: &Env<'_>,
        targets: &[Target],
        rows: &mut [TargetReport],
    ) -> Result<(), BackupError> {
        env.progress.phase("checking targets");
        let checks = futures::future::join_all(self.stores.iter().zip(targets).map(
            |(store, t)| async move {
                match store {
                    Some(s) => Some(s.check(t.check_timeout()).await),
                    None => None,
                }
            },
        ));
        let checks = tokio::select! {
            c = checks => c,
            _ = env.cancel.cancelled() => return Err(BackupError::Cancelled),
        };
        for (i, c) in checks.into_iter().enumerate() {
            match c {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    rows[i].error = Some(check_failed(&e));
                    self.stores[i] = None;
                    self.skip.insert(
                        i,
                        format!(
                            "skipped: target {} failed its check before the run",
                            self.names[i]
                        ),
                    );
                }
                None => {
                    self.skip.insert(
                        i,
                        format!("skipped: target {} could not be opened", self.names[i]),
                    );
                }
            }
        }
        if self.stores.iter().all(Option::is_none) {
            return Err(BackupError::NoUsableTarget(no_usable(targets, rows)));
        }
        Ok(())
    }

    /// A target that failed while storing `r` (dead, out of space, credentials revoked…) would make every later
    /// source wait out its retry deadline again: skip it from now on.
    pub(super) fn skip_failed_by(&mut self, r: &SourceReport) {
        for &i in &r.failed_targets {
            let name = &self.names[i];
            self.skip.entry(i).or_insert_with(|| {
                format!(
                    "skipped: target {name} failed earlier in this run (while storing {})",
                    r.name
                )
            });
        }
    }
}

/// Take the lock of each of `targets` (one result each, in order). With `--wait`, a target another run holds is
/// waited for: every lock taken is let go first (so two waiting runs never hold each other up), then all are
/// taken again once none is held. When the wait runs out, the targets still held by others fail alone (as a busy
/// target does without `--wait`), with the time-out as their error.
async fn lock_all(
    env: &Env<'_>,
    targets: &[Target],
) -> Result<Vec<Result<TargetLock, LockError>>, BackupError> {
    let take = || -> Vec<Result<TargetLock, LockError>> {
        targets
            .iter()
            .map(|t| TargetLock::acquire(&env.config.state_dir, t))
            .collect()
    };
    loop {
        let taken = take();
        // A target this process holds itself (named twice under two spellings) is not waited for: it would never
        // come free.
        let me = std::process::id().to_string();
        let busy = taken
            .iter()
            .any(|l| matches!(l, Err(LockError::Busy { pid, .. }) if *pid != me));
        let Some(w) = env.wait.as_ref().filter(|_| busy) else {
            return Ok(taken);
        };
        drop(taken);
        match wait_for_targets(env, targets, w).await {
            Ok(()) => {}
            Err(BackupError::Lock(LockError::TimedOut { waited, .. })) => {
                let timed_out = |l| match l {
                    Err(LockError::Busy { target, pid, .. }) if pid != me => {
                        Err(LockError::TimedOut {
                            target,
                            pid,
                            waited: waited.clone(),
                        })
                    }
                    l => l,
                };
                return Ok(take().into_iter().map(timed_out).collect());
            }
            Err(e) => return Err(e),
        }
    }
}

/// A target's line when it failed the check before the run, with the likely fix for what is not obvious.
fn check_failed(e: &storage::StorageError) -> String {
    use storage::StorageError as E;
    let hint = match e {
        E::Transient { .. } => {
            " (is the endpoint right and the server up? a slow link may need a longer check-timeout)"
        }
        _ => "",
    };
    format!("failed its check before the run, nothing was written to it: {e}{hint}")
}

/// Why no target is usable: each target (with its location when that says more) and its error.
fn no_usable(targets: &[Target], rows: &[TargetReport]) -> String {
    let why: Vec<String> = rows
        .iter()
        .zip(targets)
        .map(|(tr, t)| {
            let name = if t.name == tr.location {
                t.name.clone()
            } else {
                format!("{} ({})", t.name, tr.location)
            };
            format!("target {name}: {}", tr.error.clone().unwrap_or_default())
        })
        .collect();
    why.join("; ")
}
