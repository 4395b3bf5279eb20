//! The loop driven by a hand-moved clock and a runner the test answers (acceptance row 21): runs are never
//! stacked (a slot that comes during a run is skipped and counted), a failed run does not stop the daemon, jobs
//! that share a target never run at once, a broken reload keeps the old schedule, a stop cancels the run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, watch};

use super::*;

/// A clock that moves only when the test says so.
struct TestClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl TestClock {
    fn at(t: &str) -> Arc<TestClock> {
        Arc::new(TestClock {
            now: watch::Sender::new(at(t)),
        })
    }
    fn set(&self, t: &str) {
        self.now.send_replace(at(t));
    }
}

#[async_trait::async_trait]
impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }
    async fn sleep_until(&self, t: DateTime<Utc>) {
        let mut rx = self.now.subscribe();
        let _ = rx.wait_for(|now| *now >= t).await;
    }
}

fn at(t: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("2026-05-01T{t}Z"))
        .unwrap()
        .with_timezone(&Utc)
}

/// One call of the runner: the job, and where the test sends its outcome.
struct Call {
    job: String,
    reply: oneshot::Sender<JobOutcome>,
}

/// Runs nothing: hands each call to the test and waits for its answer (or the cancel: interrupted). Counts the
/// runs going on per target.
struct TestRunner {
    calls: mpsc::UnboundedSender<Call>,
    active: Mutex<HashMap<String, usize>>,
    most_at_once: Mutex<HashMap<String, usize>>,
    cancelled: AtomicUsize,
}

#[async_trait::async_trait]
impl JobRunner for TestRunner {
    async fn run(
        &self,
        _config: &Config,
        job: &Job,
        _now: DateTime<Utc>,
        cancel: CancellationToken,
        _observer: &dyn RunObserver,
    ) -> JobOutcome {
        for t in &job.targets {
            let mut a = self.active.lock().unwrap();
            let n = a.entry(t.clone()).or_default();
            *n += 1;
            let mut m = self.most_at_once.lock().unwrap();
            let most = m.entry(t.clone()).or_default();
            *most = (*most).max(*n);
        }
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Call {
                job: job.name.clone(),
                reply: tx,
            })
            .unwrap();
        let outcome = tokio::select! {
            o = rx => o.unwrap_or(JobOutcome::Failed { error: "test dropped the call".into() }),
            _ = cancel.cancelled() => {
                self.cancelled.fetch_add(1, Ordering::SeqCst);
                JobOutcome::Interrupted
            }
        };
        for t in &job.targets {
            *self.active.lock().unwrap().get_mut(t).unwrap() -= 1;
        }
        outcome
    }
}

/// What the observer saw, as text: `started a`, `finished a skipped 00:00:20`, `finished a failed`, `event …`.
/// The start and end of a job in `stuck` hang (like a notification receiver that never answers) until `unstick`.
struct TestObserver {
    seen: mpsc::UnboundedSender<String>,
    stuck: Mutex<Vec<String>>,
    unstick: watch::Sender<bool>,
}

impl TestObserver {
    async fn hang_if_stuck(&self, job: &str) {
        if self.stuck.lock().unwrap().iter().any(|j| j == job) {
            let _ = self.unstick.subscribe().wait_for(|go| *go).await;
        }
    }
}

#[async_trait::async_trait]
impl RunObserver for TestObserver {
    async fn started(&self, job: &str) {
        let _ = self.seen.send(format!("started {job}"));
        self.hang_if_stuck(job).await;
    }
    async fn finished(&self, job: &str, outcome: &JobOutcome) -> usize {
        let what = match outcome {
            JobOutcome::Finished(r) => format!("finished exit {}", r.exit_code()),
            JobOutcome::Failed { .. } => "failed".into(),
            JobOutcome::Skipped { slot } => format!("skipped {}", slot.format("%H:%M:%S")),
            JobOutcome::Interrupted => "interrupted".into(),
        };
        let _ = self.seen.send(format!("finished {job} {what}"));
        self.hang_if_stuck(job).await;
        0
    }
    async fn event(&self, event: &Event) {
        let line = match event {
            Event::Scheduled { job, next, .. } => format!(
                "event scheduled {job} {}",
                next.iter()
                    .map(|t| t.format("%H:%M:%S").to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Event::ReloadFailed { .. } => "event reload failed".into(),
            Event::Reloaded { .. } => "event reloaded".into(),
            Event::WaitingForTarget { job, .. } => format!("event waiting {job}"),
            Event::Stopping { running } => format!("event stopping {}", running.join(",")),
            Event::Recovered(_) => "event recovered".into(),
            Event::Warning(w) => format!("event warning {w}"),
        };
        let _ = self.seen.send(line);
    }
}

struct Harness {
    clock: Arc<TestClock>,
    observer: Arc<TestObserver>,
    runner: Arc<TestRunner>,
    calls: mpsc::UnboundedReceiver<Call>,
    seen: mpsc::UnboundedReceiver<String>,
    shared: Arc<Shared>,
    reload: Arc<Notify>,
    next_config: Arc<Mutex<Result<Config, String>>>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<Result<(), DaemonError>>,
    _dir: tempfile::TempDir,
}

/// `jobs`: `[job.NAME]` bodies; `{dir}` in them is replaced by a temporary directory.
fn config(dir: &std::path::Path, jobs: &str) -> Config {
    let text = format!(
        "state-dir = \"{d}/state\"\n[target.t1]\ntype = \"local\"\npath = \"{d}/t1\"\n[target.t2]\ntype = \"local\"\npath = \"{d}/t2\"\n{jobs}",
        d = dir.display()
    );
    Config::parse(&text).unwrap()
}

fn start(now: &str, jobs: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), jobs);
    let clock = TestClock::at(now);
    let (calls_tx, calls) = mpsc::unbounded_channel();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let runner = Arc::new(TestRunner {
        calls: calls_tx,
        active: Mutex::default(),
        most_at_once: Mutex::default(),
        cancelled: AtomicUsize::new(0),
    });
    let observer = Arc::new(TestObserver {
        seen: seen_tx,
        stuck: Mutex::default(),
        unstick: watch::Sender::new(false),
    });
    let (daemon, warning) =
        Daemon::new(&cfg, clock.clone(), runner.clone(), observer.clone()).unwrap();
    assert!(warning.is_none());
    let shared = daemon.shared.clone();
    let reload = Arc::new(Notify::new());
    let next_config: Arc<Mutex<Result<Config, String>>> =
        Arc::new(Mutex::new(Err("no config".into())));
    let nc = next_config.clone();
    let shutdown = CancellationToken::new();
    let control = Control {
        reload: reload.clone(),
        load: Box::new(move || nc.lock().unwrap().clone()),
        shutdown: shutdown.clone(),
    };
    let done = tokio::spawn(daemon.run(cfg, control));
    Harness {
        clock,
        observer,
        runner,
        calls,
        seen,
        shared,
        reload,
        next_config,
        shutdown,
        done,
        _dir: dir,
    }
}

impl Harness {
    /// The next thing the observer saw (within 10 s of real time: the loop is never waiting on real time).
    async fn next(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
            .await
            .expect("the daemon said nothing for 10 s")
            .expect("observer gone")
    }
    async fn expect(&mut self, want: &str) {
        let got = self.next().await;
        assert_eq!(got, want);
    }
    async fn call(&mut self) -> Call {
        tokio::time::timeout(Duration::from_secs(10), self.calls.recv())
            .await
            .expect("no run started within 10 s")
            .unwrap()
    }
    fn metrics(&self) -> String {
        self.shared.metrics.encode()
    }
}

const EVERY_10S: &str = "schedule = \"*/10 * * * * *\"\ntimezone = \"UTC\"\n";

#[tokio::test]
async fn a_slot_during_a_run_is_skipped_and_counted_and_a_failed_run_does_not_stop_the_daemon() {
    let mut h = start(
        "10:00:05",
        &format!("[job.a]\ntargets = [\"t1\"]\n{EVERY_10S}"),
    );
    h.expect("event scheduled a 10:00:10,10:00:20,10:00:30")
        .await;
    h.clock.set("10:00:10");
    h.expect("started a").await;
    let slow = h.call().await;
    assert_eq!(slow.job, "a");
    // The run is still going at the next two slots: neither is stacked.
    h.clock.set("10:00:20");
    h.expect("finished a skipped 10:00:20").await;
    h.clock.set("10:00:30");
    h.expect("finished a skipped 10:00:30").await;
    assert!(h.calls.try_recv().is_err(), "a second run was started");
    assert!(
        h.metrics()
            .contains("voltar_backup_skipped_slots_total{job=\"a\"} 2"),
        "{}",
        h.metrics()
    );
    // The slow run fails: recorded, and the next slot runs again.
    slow.reply
        .send(JobOutcome::Failed {
            error: "target t1 is full".into(),
        })
        .unwrap();
    h.expect("finished a failed").await;
    let health = h.shared.health();
    assert!(!health.healthy);
    assert!(
        health.problems[0].contains("failed: target t1 is full"),
        "{health:?}"
    );
    h.clock.set("10:00:40");
    h.expect("started a").await;
    let again = h.call().await;
    let m = h.metrics();
    assert!(
        m.contains("voltar_backup_attempts_total{job=\"a\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("voltar_backup_failures_total{job=\"a\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("voltar_backup_last_status{job=\"a\",target=\"t1\"} 0"),
        "{m}"
    );
    again
        .reply
        .send(JobOutcome::Failed { error: "x".into() })
        .unwrap();
    h.expect("finished a failed").await;
    // The failures are persisted for the next start.
    let state = read_state(&state_path(&h._dir.path().join("state"))).unwrap();
    assert_eq!(
        state.jobs["a"].last.as_ref().unwrap().result,
        RunResult::Failed
    );
    h.shutdown.cancel();
    h.done.await.unwrap().unwrap();
}

#[tokio::test]
async fn jobs_sharing_a_target_take_turns_and_others_run_alongside() {
    let mut h = start(
        "10:00:05",
        &format!(
            "[job.a]\ntargets = [\"t1\"]\n{EVERY_10S}[job.b]\ntargets = [\"t1\", \"t2\"]\n{EVERY_10S}[job.c]\ntargets = [\"t2\"]\nschedule = \"15 * * * * *\"\ntimezone = \"UTC\"\n"
        ),
    );
    for _ in 0..3 {
        assert!(h.next().await.starts_with("event scheduled"));
    }
    h.clock.set("10:00:10");
    let mut lines = vec![h.next().await, h.next().await, h.next().await];
    lines.sort();
    // Both are started (neither slot is lost), b waits for a's target.
    assert_eq!(lines, ["event waiting b", "started a", "started b"]);
    let first = h.call().await;
    assert_eq!(first.job, "a");
    assert!(h.calls.try_recv().is_err(), "b ran on t1 while a did");
    // c shares only t2 with b, which is waiting, not running: c runs, and b then waits for it as well.
    h.clock.set("10:00:15");
    h.expect("started c").await;
    let c = h.call().await;
    assert_eq!(c.job, "c");
    first.reply.send(JobOutcome::Interrupted).unwrap();
    h.expect("finished a interrupted").await;
    assert!(h.calls.try_recv().is_err(), "b ran on t2 while c did");
    c.reply.send(JobOutcome::Interrupted).unwrap();
    h.expect("finished c interrupted").await;
    let second = h.call().await;
    assert_eq!(second.job, "b");
    second.reply.send(JobOutcome::Interrupted).unwrap();
    h.expect("finished b interrupted").await;
    let most = h.runner.most_at_once.lock().unwrap().clone();
    assert_eq!(most.get("t1"), Some(&1), "{most:?}");
    assert_eq!(most.get("t2"), Some(&1), "{most:?}");
    h.shutdown.cancel();
    h.done.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_broken_reload_keeps_the_old_schedule_and_a_good_one_changes_the_next_slot() {
    let mut h = start(
        "10:00:05",
        &format!("[job.a]\ntargets = [\"t1\"]\n{EVERY_10S}"),
    );
    h.expect("event scheduled a 10:00:10,10:00:20,10:00:30")
        .await;
    *h.next_config.lock().unwrap() = Err("config x: line 3: bad".into());
    h.reload.notify_one();
    h.expect("event reload failed").await;
    h.clock.set("10:00:10");
    h.expect("started a").await;
    h.call().await.reply.send(JobOutcome::Interrupted).unwrap();
    h.expect("finished a interrupted").await;
    // Now every 15 s from the minute: the next slot is :15, not :20.
    let dir = h._dir.path().to_path_buf();
    *h.next_config.lock().unwrap() = Ok(config(
        &dir,
        "[job.a]\ntargets = [\"t1\"]\nschedule = \"*/15 * * * * *\"\ntimezone = \"UTC\"\n",
    ));
    h.reload.notify_one();
    h.expect("event reloaded").await;
    h.expect("event scheduled a 10:00:15,10:00:30,10:00:45")
        .await;
    h.clock.set("10:00:15");
    h.expect("started a").await;
    let run = h.call().await;
    // Stop during the run: the run is cancelled (interrupted), the loop ends.
    h.shutdown.cancel();
    h.expect("event stopping a").await;
    h.expect("finished a interrupted").await;
    h.done.await.unwrap().unwrap();
    assert_eq!(h.runner.cancelled.load(Ordering::SeqCst), 1);
    drop(run);
}

/// A notification receiver that hangs (a dead healthchecks URL, a webhook that never answers) delays neither its
/// own job's backup nor another job's slot: the start goes out beside the run, the end after the loop moved on,
/// and a job's end is still told after its start.
#[tokio::test]
async fn a_hanging_notification_delays_no_run() {
    let mut h = start(
        "10:00:05",
        &format!(
            "[job.a]\ntargets = [\"t1\"]\n{EVERY_10S}[job.b]\ntargets = [\"t2\"]\n{EVERY_10S}"
        ),
    );
    for _ in 0..2 {
        assert!(h.next().await.starts_with("event scheduled"));
    }
    h.observer.stuck.lock().unwrap().push("a".into());
    h.clock.set("10:00:10");
    let mut runs = vec![h.call().await, h.call().await];
    runs.sort_by(|x, y| x.job.cmp(&y.job));
    assert_eq!(
        runs.iter().map(|c| c.job.as_str()).collect::<Vec<_>>(),
        ["a", "b"],
        "a run waited for its start notification"
    );
    let mut lines = vec![h.next().await, h.next().await];
    lines.sort();
    assert_eq!(lines, ["started a", "started b"]);
    // a's notifications hang: its run's end is recorded all the same, b's end is told, the next slot runs both.
    let (b, a) = (runs.pop().unwrap(), runs.pop().unwrap());
    a.reply
        .send(JobOutcome::Failed {
            error: "a broke".into(),
        })
        .unwrap();
    b.reply
        .send(JobOutcome::Failed {
            error: "b broke".into(),
        })
        .unwrap();
    h.expect("finished b failed").await;
    let health = h.shared.health();
    assert!(
        health.problems.iter().any(|p| p.contains("a broke")),
        "a's end was not recorded while its notification hung: {health:?}"
    );
    h.clock.set("10:00:20");
    let mut again = vec![h.call().await.job, h.call().await.job];
    again.sort();
    assert_eq!(again, ["a", "b"]);
    let mut lines = vec![h.next().await, h.next().await];
    lines.sort();
    assert_eq!(lines, ["started a", "started b"]);
    // Released: a's first end is told now (after its start, which is what was hanging).
    h.observer.unstick.send_replace(true);
    h.expect("finished a failed").await;
    h.shutdown.cancel();
    h.done.await.unwrap().unwrap();
}

/// Health at two clocks: a fresh job is healthy until its first slot + max-age; a success ages out; a failure
/// is unhealthy at once.
#[test]
fn health_judges_failures_and_staleness() {
    let jobs = BTreeMap::from([(
        "a".to_string(),
        JobClock {
            targets: vec!["t1".into()],
            next: at("10:00:10"),
            first_slot: at("10:00:10"),
            max_age: Duration::from_secs(20),
        },
    )]);
    let mut state = StateFile::default();
    assert!(health(&state, &jobs, at("10:00:29")).healthy);
    let h = health(&state, &jobs, at("10:00:31"));
    assert!(
        !h.healthy && h.problems[0].contains("no successful run"),
        "{h:?}"
    );
    let ok = LastRun {
        started_at: at("10:00:10"),
        finished_at: at("10:00:12"),
        result: RunResult::Ok,
        backup_id: None,
        error: None,
        bytes_read: 1,
        stored_bytes: 1,
        duration_ms: 2000,
        targets: BTreeMap::new(),
    };
    state.jobs.insert(
        "a".into(),
        JobState {
            last: Some(ok.clone()),
            last_success: Some(at("10:00:12")),
            target_success: BTreeMap::new(),
        },
    );
    assert!(health(&state, &jobs, at("10:00:31")).healthy);
    let h = health(&state, &jobs, at("10:00:33"));
    assert!(
        !h.healthy && h.problems[0].contains("older than max-age"),
        "{h:?}"
    );
    state.jobs.get_mut("a").unwrap().last = Some(LastRun {
        result: RunResult::Partial,
        error: Some("pg: not stored on t1: full".into()),
        ..ok
    });
    let h = health(&state, &jobs, at("10:00:13"));
    assert!(!h.healthy && h.problems[0].contains("partial: pg"), "{h:?}");
    // Round trip through the file.
    let dir = tempfile::tempdir().unwrap();
    let p = state_path(dir.path());
    write_state(&p, &state).unwrap();
    assert_eq!(read_state(&p).unwrap(), state);
}
