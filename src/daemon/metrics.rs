//! The daemon's Prometheus metrics (`GET /metrics`), encoded by `prometheus-client` (OpenMetrics text, which
//! Prometheus 0.0.4 text parsers read too: the `# EOF` line is a comment to them; served as
//! `text/plain; version=0.0.4` unless the scraper asks for OpenMetrics). Names follow what backup
//! exporters use; labels `job`, `target`, `source` where they apply. Every job and target series exists from the
//! start (sources as soon as a plan names them), at 0 or at the persisted last outcome, so an alert on
//! `time() - voltar_backup_last_success_timestamp_seconds` never sees a missing series.

use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::state::{target_ok, RunResult, StateFile};
use super::JobOutcome;
use crate::config::Config;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobL {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobTarget {
    job: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobSource {
    job: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobTargetSource {
    job: String,
    target: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// Buckets of `voltar_backup_duration_seconds`: 1 s to 18 h, ×4.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 9))
}

/// The registry and every family in it.
pub struct Metrics {
    registry: Registry,
    last_success: Family<JobTarget, F64Gauge>,
    last_status: Family<JobTarget, Gauge>,
    attempts: Family<JobL, Counter>,
    failures: Family<JobL, Counter>,
    skipped: Family<JobL, Counter>,
    notify_failed: Family<JobL, Counter>,
    duration: Family<JobL, Histogram, fn() -> Histogram>,
    bytes_read: Family<JobSource, Counter>,
    stored: Family<JobTargetSource, Gauge>,
    downtime: Family<JobSource, F64Gauge>,
    next_run: Family<JobL, F64Gauge>,
    unprotected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            last_success: Family::default(),
            last_status: Family::default(),
            attempts: Family::default(),
            failures: Family::default(),
            skipped: Family::default(),
            notify_failed: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            bytes_read: Family::default(),
            stored: Family::default(),
            downtime: Family::default(),
            next_run: Family::default(),
            unprotected: Gauge::default(),
        };
        registry.register(
            "voltar_backup_last_success_timestamp_seconds",
            "When the job last stored every source on this target (Unix time; 0: never)",
            m.last_success.clone(),
        );
        registry.register(
            "voltar_backup_last_status",
            "Whether the job's last run stored every source on this target (1 ok, 0 failed or not run yet)",
            m.last_status.clone(),
        );
        // Counters: the encoder adds `_total`.
        registry.register(
            "voltar_backup_attempts",
            "Runs started by the daemon",
            m.attempts.clone(),
        );
        registry.register(
            "voltar_backup_failures",
            "Runs that did not store every source on every target",
            m.failures.clone(),
        );
        registry.register(
            "voltar_backup_skipped_slots",
            "Slots skipped because the job's previous run was still going",
            m.skipped.clone(),
        );
        registry.register(
            "voltar_notifications_failed",
            "Notifications of the job's runs (healthchecks pings, webhooks, ntfy, e-mail) that could not be delivered",
            m.notify_failed.clone(),
        );
        registry.register(
            "voltar_backup_duration_seconds",
            "How long runs took",
            m.duration.clone(),
        );
        registry.register(
            "voltar_backup_bytes_read",
            "Bytes read from each source",
            m.bytes_read.clone(),
        );
        registry.register(
            "voltar_backup_stored_bytes",
            "Bytes the last run stored of each source on each target (compressed, encrypted)",
            m.stored.clone(),
        );
        registry.register(
            "voltar_container_downtime_seconds",
            "Longest time a container was paused or stopped while the source was read, in the last run",
            m.downtime.clone(),
        );
        registry.register(
            "voltar_backup_next_run_timestamp_seconds",
            "The job's next scheduled run (Unix time)",
            m.next_run.clone(),
        );
        registry.register(
            "voltar_volumes_unprotected",
            "Named volumes that no job backs up",
            m.unprotected.clone(),
        );
        let build: Family<Build, Gauge> = Family::default();
        build
            .get_or_create(&Build {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("voltar_build_info", "The voltar version (always 1)", build);
        Metrics { registry, ..m }
    }

    /// Create every job and target series of `config`'s scheduled jobs (at 0, or at the persisted outcome).
    pub fn declare(&self, config: &Config, state: &StateFile) {
        for (name, job) in config.jobs.iter().filter(|(_, j)| j.schedule.is_some()) {
            let jl = JobL { job: name.clone() };
            let _ = self.attempts.get_or_create(&jl);
            let _ = self.failures.get_or_create(&jl);
            let _ = self.skipped.get_or_create(&jl);
            let _ = self.notify_failed.get_or_create(&jl);
            let _ = self.duration.get_or_create(&jl);
            let _ = self.next_run.get_or_create(&jl);
            let js = state.jobs.get(name);
            for t in &job.targets {
                let jt = JobTarget {
                    job: name.clone(),
                    target: t.clone(),
                };
                let success = js.and_then(|j| j.target_success.get(t));
                self.last_success
                    .get_or_create(&jt)
                    .set(success.map_or(0.0, |at| seconds(*at)));
                let ok = js
                    .and_then(|j| j.last.as_ref())
                    .is_some_and(|l| l.result == RunResult::Ok);
                self.last_status.get_or_create(&jt).set(ok as i64);
            }
        }
    }

    /// Create the source series of `job` (from its plan) and set the count of unprotected volumes.
    pub fn declare_sources(&self, job: &str, targets: &[String], sources: &[String]) {
        for s in sources {
            let js = JobSource {
                job: job.into(),
                source: s.clone(),
            };
            let _ = self.bytes_read.get_or_create(&js);
            let _ = self.downtime.get_or_create(&js);
            for t in targets {
                let _ = self.stored.get_or_create(&JobTargetSource {
                    job: job.into(),
                    target: t.clone(),
                    source: s.clone(),
                });
            }
        }
    }

    pub fn unprotected(&self, n: usize) {
        self.unprotected.set(n as i64);
    }

    pub fn next_run(&self, job: &str, at: DateTime<Utc>) {
        self.next_run
            .get_or_create(&JobL { job: job.into() })
            .set(seconds(at));
    }

    pub fn notifications_failed(&self, job: &str, n: usize) {
        if n > 0 {
            self.notify_failed
                .get_or_create(&JobL { job: job.into() })
                .inc_by(n as u64);
        }
    }

    pub fn skipped(&self, job: &str) {
        self.skipped.get_or_create(&JobL { job: job.into() }).inc();
    }

    /// Count a run that ended at `now`.
    pub fn outcome(
        &self,
        job: &str,
        targets: &[String],
        started: DateTime<Utc>,
        now: DateTime<Utc>,
        outcome: &JobOutcome,
    ) {
        let jl = JobL { job: job.into() };
        if matches!(outcome, JobOutcome::Skipped { .. }) {
            return;
        }
        self.attempts.get_or_create(&jl).inc();
        if !outcome.succeeded() && !matches!(outcome, JobOutcome::Interrupted) {
            self.failures.get_or_create(&jl).inc();
        }
        let secs = (now - started).num_milliseconds().max(0) as f64 / 1000.0;
        self.duration.get_or_create(&jl).observe(secs);
        let report = match outcome {
            JobOutcome::Finished(r) => Some(r),
            JobOutcome::Interrupted => return,
            _ => None,
        };
        for t in targets {
            let jt = JobTarget {
                job: job.into(),
                target: t.clone(),
            };
            let ok = report.is_some_and(|r| target_ok(r, t));
            self.last_status.get_or_create(&jt).set(ok as i64);
            if ok {
                self.last_success.get_or_create(&jt).set(seconds(now));
            }
        }
        let Some(r) = report else { return };
        for s in &r.sources {
            let js = JobSource {
                job: job.into(),
                source: s.name.clone(),
            };
            self.bytes_read.get_or_create(&js).inc_by(s.counts.bytes);
            self.downtime
                .get_or_create(&js)
                .set(s.downtime_ms() as f64 / 1000.0);
            for t in &r.targets {
                let stored = if t.committed && !s.target_errors.contains_key(&t.name) {
                    s.stored_bytes
                } else {
                    0
                };
                self.stored
                    .get_or_create(&JobTargetSource {
                        job: job.into(),
                        target: t.name.clone(),
                        source: s.name.clone(),
                    })
                    .set(stored as i64);
            }
        }
    }

    /// The exposition, OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

fn seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}
