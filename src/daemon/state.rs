//! Each job's last outcome, kept in `<state-dir>/daemon-state.json` so that `/healthz`, the metrics and
//! `voltar status` say the same after a restart. Written atomically (temp file, fsync, rename, fsync of the
//! directory) after every run; a reader never sees half a file.
//!
//! Health ([`health`]): every scheduled job's last run succeeded (stored every source on every target) and its
//! last success is younger than the job's max-age. A job that never succeeded is judged from its first slot
//! since the daemon started: healthy until that slot + max-age, so a fresh daemon is not unhealthy before it
//! had a chance to run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{JobClock, JobOutcome};
use crate::backup::{RunReport, Status};

/// The state file's name in the state dir.
pub const STATE_FILE: &str = "daemon-state.json";

/// Version of the state file's format.
const FORMAT: u32 = 1;

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// The whole state file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct StateFile {
    #[serde(default)]
    pub format: u32,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub jobs: BTreeMap<String, JobState>,
}

/// One job's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct JobState {
    /// The last run that ended (skipped slots are not runs).
    pub last: Option<LastRun>,
    /// When the last successful run ended.
    pub last_success: Option<DateTime<Utc>>,
    /// Per target: when it last took a whole backup of this job.
    #[serde(default)]
    pub target_success: BTreeMap<String, DateTime<Utc>>,
}

/// How a run ended, in the words of `backup --json`'s status (plus `interrupted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunResult {
    /// Every source stored on every target.
    Ok,
    /// Committed somewhere, but a source or target (or the prune) failed.
    Partial,
    /// Stored everywhere, but a source misses entries.
    Incomplete,
    /// Nothing committed.
    Failed,
    /// Stopped by the daemon's stop: nothing committed.
    Interrupted,
}

impl RunResult {
    pub fn of(r: &RunReport) -> RunResult {
        if r.exit_code() == 0 {
            return RunResult::Ok;
        }
        let committed = r.targets.iter().any(|t| t.committed);
        let stored = r
            .sources
            .iter()
            .any(|s| matches!(s.status, Status::Ok | Status::Partial | Status::Incomplete));
        let whole = r
            .sources
            .iter()
            .all(|s| matches!(s.status, Status::Ok | Status::Incomplete));
        let targets_ok = r.targets.iter().all(|t| {
            t.committed && t.error.is_none() && t.prune.as_ref().is_none_or(|p| p.is_ok())
        });
        if !committed || !stored {
            RunResult::Failed
        } else if !whole || !targets_ok {
            RunResult::Partial
        } else {
            RunResult::Incomplete
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Ok => "ok",
            RunResult::Partial => "partial",
            RunResult::Incomplete => "incomplete",
            RunResult::Failed => "failed",
            RunResult::Interrupted => "interrupted",
        }
    }
}

/// One run that ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LastRun {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub result: RunResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes read from the sources.
    pub bytes_read: u64,
    /// Bytes stored per target (compressed, encrypted).
    pub stored_bytes: u64,
    pub duration_ms: u64,
    #[serde(default)]
    pub targets: BTreeMap<String, TargetRun>,
}

/// One run on one target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct TargetRun {
    pub committed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes of this run stored on this target.
    pub stored_bytes: u64,
}

impl StateFile {
    /// Record `outcome` of `job`'s run that started at `started` and ended at `now`. False for a skipped slot
    /// (nothing to write).
    pub fn record(
        &mut self,
        job: &str,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
        outcome: &JobOutcome,
    ) -> bool {
        let duration_ms = (now - started).num_milliseconds().max(0) as u64;
        let last = match outcome {
            JobOutcome::Skipped { .. } => return false,
            JobOutcome::Finished(r) => {
                let targets: BTreeMap<String, TargetRun> = r
                    .targets
                    .iter()
                    .map(|t| {
                        let stored = r
                            .sources
                            .iter()
                            .filter(|s| {
                                t.committed
                                    && matches!(
                                        s.status,
                                        Status::Ok | Status::Partial | Status::Incomplete
                                    )
                                    && !s.target_errors.contains_key(&t.name)
                            })
                            .map(|s| s.stored_bytes)
                            .sum();
                        (
                            t.name.clone(),
                            TargetRun {
                                committed: t.committed,
                                error: t.error.clone(),
                                stored_bytes: stored,
                            },
                        )
                    })
                    .collect();
                LastRun {
                    started_at: started,
                    finished_at: now,
                    result: RunResult::of(r),
                    backup_id: Some(r.id.as_str().to_string()),
                    error: first_error(r),
                    bytes_read: r.sources.iter().map(|s| s.counts.bytes).sum(),
                    stored_bytes: targets.values().map(|t| t.stored_bytes).max().unwrap_or(0),
                    duration_ms,
                    targets,
                }
            }
            JobOutcome::Failed { error } => LastRun {
                started_at: started,
                finished_at: now,
                result: RunResult::Failed,
                backup_id: None,
                error: Some(error.clone()),
                bytes_read: 0,
                stored_bytes: 0,
                duration_ms,
                targets: BTreeMap::new(),
            },
            JobOutcome::Interrupted => LastRun {
                started_at: started,
                finished_at: now,
                result: RunResult::Interrupted,
                backup_id: None,
                error: Some("interrupted by the daemon's stop: nothing was committed".into()),
                bytes_read: 0,
                stored_bytes: 0,
                duration_ms,
                targets: BTreeMap::new(),
            },
        };
        let entry = self.jobs.entry(job.to_string()).or_default();
        if last.result == RunResult::Ok {
            entry.last_success = Some(now);
        }
        if let JobOutcome::Finished(r) = outcome {
            for t in &r.targets {
                if target_ok(r, &t.name) {
                    entry.target_success.insert(t.name.clone(), now);
                }
            }
        }
        // A stop during a run says nothing about the job's health: keep the run before it as the last one.
        if last.result != RunResult::Interrupted || entry.last.is_none() {
            entry.last = Some(last);
        }
        self.format = FORMAT;
        self.updated_at = Some(now);
        true
    }
}

/// Whether run `r` stored every source on target `name` (committed, no error, pruned as configured).
pub fn target_ok(r: &RunReport, name: &str) -> bool {
    let Some(t) = r.targets.iter().find(|t| t.name == name) else {
        return false;
    };
    t.committed
        && t.error.is_none()
        && t.prune.as_ref().is_none_or(|p| p.is_ok())
        && !r.sources.is_empty()
        && r.sources.iter().all(|s| {
            matches!(s.status, Status::Ok | Status::Partial) && !s.target_errors.contains_key(name)
        })
}

/// What went wrong in a run that did not store everything, in one line.
fn first_error(r: &RunReport) -> Option<String> {
    if r.exit_code() == 0 {
        return None;
    }
    let source = r.sources.iter().find_map(|s| match (&s.error, s.status) {
        (Some(e), _) => Some(format!("{}: {e}", s.name)),
        (None, Status::Incomplete) => Some(format!(
            "{}: {} entries not archived",
            s.name, s.not_archived_count
        )),
        (None, Status::Partial) => s
            .target_errors
            .iter()
            .next()
            .map(|(t, e)| format!("{}: not stored on {t}: {e}", s.name)),
        _ => None,
    });
    let target = r
        .targets
        .iter()
        .find_map(|t| t.error.as_ref().map(|e| format!("target {}: {e}", t.name)));
    source.or(target).or_else(|| {
        if r.sources.is_empty() {
            Some("no source was selected for backup".into())
        } else {
            Some("the prune after the backup failed".into())
        }
    })
}

/// Read the state file; a missing file is an empty state.
pub fn read_state(path: &Path) -> Result<StateFile, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "daemon state {} is unreadable ({e}); starting without the last outcomes (the file is rewritten after the next run)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
        Err(e) => Err(format!("cannot read daemon state {}: {e}", path.display())),
    }
}

/// Write the state file atomically: a temp file beside it, fsync, rename over it, fsync the directory.
pub fn write_state(path: &Path, state: &StateFile) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let fail = |e: std::io::Error| format!("cannot write daemon state {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let tmp = dir.join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(state).expect("state serialises");
    bytes.push(b'\n');
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(fail)
}

/// The daemon's health, with the reasons when it is not healthy.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Health {
    pub healthy: bool,
    /// One line per unhealthy job.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Judge every scheduled job (`jobs`) from `state` at `now`: see the module docs.
pub fn health(state: &StateFile, jobs: &BTreeMap<String, JobClock>, now: DateTime<Utc>) -> Health {
    let mut problems = Vec::new();
    for (name, clock) in jobs {
        let js = state.jobs.get(name);
        if let Some(last) = js.and_then(|j| j.last.as_ref()) {
            if last.result != RunResult::Ok {
                problems.push(format!(
                    "job {name}: last run at {} {}{}",
                    last.started_at.format("%Y-%m-%d %H:%M:%SZ"),
                    last.result.as_str(),
                    last.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
                continue;
            }
        }
        let max_age = chrono::Duration::from_std(clock.max_age).unwrap_or(chrono::Duration::MAX);
        match js.and_then(|j| j.last_success) {
            Some(at) if now - at > max_age => problems.push(format!(
                "job {name}: last success at {} is older than max-age {}",
                at.format("%Y-%m-%d %H:%M:%SZ"),
                human_duration(clock.max_age)
            )),
            Some(_) => {}
            None if now - clock.first_slot > max_age => problems.push(format!(
                "job {name}: no successful run since its first slot at {} (max-age {})",
                clock.first_slot.format("%Y-%m-%d %H:%M:%SZ"),
                human_duration(clock.max_age)
            )),
            None => {}
        }
    }
    Health {
        healthy: problems.is_empty(),
        problems,
    }
}

fn human_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
