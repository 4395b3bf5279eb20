//! `voltar daemon`, `voltar status` and `voltar healthcheck`: start the scheduling loop with the real clock and
//! runner, render what it reports (one line per event on stdout, or one JSON object per line with `--json`), and
//! read its state back.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Placeholders};
use crate::daemon::{
    self, BackupRunner, Control, Daemon, Event, JobOutcome, RunObserver, RunResult, SystemClock,
};
use crate::notify::Notifier;
use crate::schedule::Schedule;

use super::backup::summary_json;
use super::render::{human, human_ms, table};
use super::{out, out_json, EXIT_FAILED, EXIT_OK};

/// The face of the daemon's runs: a log line per event on stdout (`--json`: one object per line), and each run's
/// notifications (the job's `healthcheck-url` and `[[notify]]`, from the config in force: reloads included),
/// with the same summary `voltar backup --json` prints and sends.
struct Lines {
    json: bool,
    config: std::sync::Mutex<Arc<Config>>,
}

impl Lines {
    /// The line of a finished (or skipped) run.
    fn log_finished(&self, job: &str, outcome: &JobOutcome) {
        match outcome {
            JobOutcome::Finished(r) => {
                let result = RunResult::of(r);
                let stored: u64 = r.sources.iter().map(|s| s.stored_bytes).sum();
                let ms = (r.finished_at - r.started_at).num_milliseconds().max(0) as u64;
                let mut human_line = format!(
                    "job {job}: run {} {}: {} source(s), {} stored, {}",
                    result.as_str(),
                    r.id.as_str(),
                    r.sources.len(),
                    human(stored),
                    human_ms(ms)
                );
                for s in r.sources.iter().filter(|s| s.error.is_some()) {
                    human_line.push_str(&format!(
                        "; {}: {}",
                        s.name,
                        s.error.clone().unwrap_or_default()
                    ));
                }
                if result != RunResult::Ok {
                    // Why a run without a source or target error failed: e.g. nothing was selected.
                    for n in &r.notes {
                        human_line.push_str(&format!("; {n}"));
                    }
                }
                for t in r.targets.iter().filter(|t| t.error.is_some()) {
                    human_line.push_str(&format!(
                        "; target {}: {}",
                        t.name,
                        t.error.clone().unwrap_or_default()
                    ));
                }
                self.line(
                    human_line,
                    serde_json::json!({"event": "finished", "job": job, "status": result.as_str(), "report": r}),
                );
            }
            JobOutcome::Failed { error } => self.line(
                format!("job {job}: run FAILED: {error}"),
                serde_json::json!({"event": "finished", "job": job, "status": "failed", "error": error}),
            ),
            JobOutcome::Skipped { slot } => self.line(
                format!(
                    "job {job}: slot {} skipped: the previous run is still going",
                    stamp(*slot)
                ),
                serde_json::json!({"event": "skipped", "job": job, "slot": stamp(*slot)}),
            ),
            JobOutcome::Interrupted => self.line(
                format!("job {job}: run interrupted by the stop: containers resumed, nothing committed"),
                serde_json::json!({"event": "finished", "job": job, "status": "interrupted"}),
            ),
        }
    }

    fn notifier(&self, job: &str) -> Option<Notifier> {
        let config = self.config.lock().expect("config").clone();
        Some(Notifier::for_job(&config, job)).filter(|n| !n.is_empty())
    }
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Lines {
    fn line(&self, human: String, json: serde_json::Value) {
        if self.json {
            let mut obj = json;
            obj["time"] = serde_json::Value::String(stamp(Utc::now()));
            out(&format!("{obj}\n"));
        } else {
            out(&format!("{} {human}\n", stamp(Utc::now())));
        }
    }
}

#[async_trait::async_trait]
impl RunObserver for Lines {
    async fn started(&self, job: &str) {
        self.line(
            format!("job {job}: run started"),
            serde_json::json!({"event": "started", "job": job}),
        );
        if let Some(n) = self.notifier(job) {
            n.started().await;
        }
    }

    async fn finished(&self, job: &str, outcome: &JobOutcome) -> usize {
        self.log_finished(job, outcome);
        // A skipped slot is not a run, and an interrupted one (the daemon stopping) has no result to report.
        let summary = match outcome {
            JobOutcome::Finished(r) => Some((r.exit_code() == EXIT_OK, summary_json(r))),
            JobOutcome::Failed { error } => Some((
                false,
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "error": error, "exit-code": super::EXIT_FATAL })
                    )
                    .expect("serializable")
                ),
            )),
            JobOutcome::Skipped { .. } | JobOutcome::Interrupted => None,
        };
        match (summary, self.notifier(job)) {
            (Some((ok, body)), Some(n)) => n.finished(ok, &body).await.len(),
            _ => 0,
        }
    }

    async fn event(&self, event: &Event) {
        match event {
            Event::Scheduled {
                job,
                schedule,
                zone,
                next,
            } => {
                let times: Vec<String> = next.iter().map(|t| stamp(*t)).collect();
                self.line(
                    format!(
                        "job {job}: schedule \"{schedule}\" ({zone}), next runs {}",
                        times.join(", ")
                    ),
                    serde_json::json!({"event": "scheduled", "job": job, "schedule": schedule, "timezone": zone, "next": times}),
                );
            }
            Event::Recovered(lines) => {
                for l in lines {
                    self.line(
                        format!("recovered from an interrupted run: {l}"),
                        serde_json::json!({"event": "recovered", "what": l}),
                    );
                }
            }
            Event::Reloaded { path, config } => {
                *self.config.lock().expect("config") = config.clone();
                let p = path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "built-in defaults".into());
                self.line(
                    format!("config reloaded from {p}"),
                    serde_json::json!({"event": "reloaded", "config": p}),
                );
            }
            Event::ReloadFailed { error } => self.line(
                format!("config NOT reloaded, keeping the running one: {error}"),
                serde_json::json!({"event": "reload-failed", "error": error}),
            ),
            Event::WaitingForTarget { job, target } => self.line(
                format!("job {job}: waiting for target {target}, which another run is using"),
                serde_json::json!({"event": "waiting", "job": job, "target": target}),
            ),
            Event::Stopping { running } => self.line(
                if running.is_empty() {
                    "stopping: no run was going".to_string()
                } else {
                    format!(
                        "stopping: cancelling the run of {} (containers are resumed, nothing is committed)",
                        running.join(", ")
                    )
                },
                serde_json::json!({"event": "stopping", "running": running}),
            ),
            Event::Warning(w) => self.line(
                format!("warning: {w}"),
                serde_json::json!({"event": "warning", "message": w}),
            ),
        }
    }
}

/// `voltar daemon`.
pub(super) async fn daemon(
    config: Config,
    config_path: Option<PathBuf>,
    placeholders: Placeholders,
    json: bool,
    cancel: CancellationToken,
) -> Result<i32> {
    let observer = Arc::new(Lines {
        json,
        config: std::sync::Mutex::new(Arc::new(config.clone())),
    });
    let engine = super::connect(&config).await?;
    // What a killed run (of an earlier daemon, or a one-shot) left paused or stopped goes back first.
    let recovered = crate::quiesce::recover_run(&config.state_dir, &config.spool_dir(), &engine)
        .await
        .context("replaying the crash journal")?;
    observer.event(&Event::Recovered(recovered.lines())).await;
    let (daemon, warning) = Daemon::new(
        &config,
        Arc::new(SystemClock),
        Arc::new(BackupRunner),
        observer.clone(),
    )?;
    if let Some(w) = warning {
        observer.event(&Event::Warning(w)).await;
    }
    if let Some(addr) = config.daemon.listen {
        let (bound, _task) = daemon::serve(addr, daemon.shared.clone(), cancel.clone()).await?;
        observer.line(
            format!("listening on http://{bound} (GET /healthz, /metrics)"),
            serde_json::json!({"event": "listening", "address": bound.to_string()}),
        );
    }
    let reload = Arc::new(Notify::new());
    {
        let reload = reload.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot watch SIGHUP")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reload.notify_one();
            }
        });
    }
    let path = config_path.or_else(|| config.source.clone());
    let control = Control {
        reload,
        // A reloaded config's targets are expanded with the values found at start (once per daemon; a reload
        // that starts using {node} without VOLTAR_NODE fails and keeps the old config: restart the daemon).
        load: Box::new(move || {
            let mut c = Config::load(path.as_deref()).map_err(|e| e.to_string())?;
            c.expand_targets(&placeholders).map_err(|e| e.to_string())?;
            Ok(c)
        }),
        shutdown: cancel,
    };
    daemon.run(config, control).await?;
    Ok(EXIT_OK)
}

/// The address to ask for a listener bound to `addr`: a wildcard bind is asked on loopback.
fn ask_at(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// `voltar healthcheck`: 0 when the daemon says healthy, 1 otherwise (also when nothing answers).
pub(super) async fn healthcheck(config: &Config, json: bool) -> Result<i32> {
    let Some(addr) = config.daemon.listen else {
        anyhow::bail!(
            "[daemon] listen is \"\" in {}: the daemon serves no /healthz to ask (set listen = \"127.0.0.1:9799\")",
            config
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the config".into())
        );
    };
    let addr = ask_at(addr);
    match daemon::healthz(addr).await {
        Ok((200, body)) => {
            if json {
                out(&body);
            } else {
                out("healthy\n");
            }
            Ok(EXIT_OK)
        }
        Ok((code, body)) => {
            if json {
                out(&body);
            } else {
                let problems: Vec<String> = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["problems"].as_array().cloned())
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_else(|| vec![format!("HTTP {code}: {}", body.trim())]);
                eprintln!("voltar: unhealthy:");
                for p in problems {
                    eprintln!("  {p}");
                }
            }
            Ok(EXIT_FAILED)
        }
        Err(e) => {
            eprintln!("voltar: unhealthy: {e}");
            if json {
                out_json(&serde_json::json!({"healthy": false, "problems": [e.to_string()]}));
            }
            Ok(EXIT_FAILED)
        }
    }
}

/// One job on one target in `voltar status`.
#[derive(serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct TargetStatus {
    target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_run: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stored_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_success: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct JobStatus {
    job: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_run: Option<DateTime<Utc>>,
    targets: Vec<TargetStatus>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct StatusOut {
    /// Where the last runs come from: `daemon-state` or `targets`.
    from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_file: Option<String>,
    jobs: Vec<JobStatus>,
    /// Named volumes no job backs up; `None` when the engine could not be asked.
    unprotected_volumes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

/// `voltar status`: per job and target the last run and the next, and the volumes no job covers.
pub(super) async fn status(config: &Config, json: bool) -> Result<i32> {
    let now = Utc::now();
    let path = daemon::state_path(&config.state_dir);
    let state = if path.exists() {
        Some(daemon::read_state(&path).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let mut notes = Vec::new();
    let mut jobs = Vec::new();
    for (name, job) in &config.jobs {
        let schedule = job.schedule.as_ref().and_then(|s| Schedule::of(s).ok());
        let mut targets = Vec::new();
        match &state {
            Some(st) => {
                let js = st.jobs.get(name);
                for t in &job.targets {
                    let last = js.and_then(|j| j.last.as_ref());
                    let tr = last.and_then(|l| l.targets.get(t));
                    targets.push(TargetStatus {
                        target: t.clone(),
                        last_run: last.map(|l| l.started_at),
                        result: last.map(|l| {
                            match tr {
                                Some(tr) if tr.committed && tr.error.is_none() => l.result.as_str(),
                                Some(_) => "failed",
                                None => l.result.as_str(),
                            }
                            .to_string()
                        }),
                        stored_bytes: tr.map(|t| t.stored_bytes),
                        duration_ms: last.map(|l| l.duration_ms),
                        last_success: js.and_then(|j| j.target_success.get(t).copied()),
                        error: tr
                            .and_then(|t| t.error.clone())
                            .or_else(|| last.and_then(|l| l.error.clone())),
                    });
                }
            }
            None => {
                for t in &job.targets {
                    targets.push(from_manifests(config, name, t, &mut notes).await);
                }
            }
        }
        jobs.push(JobStatus {
            job: name.clone(),
            schedule: job.schedule.as_ref().map(|s| s.expr.clone()),
            timezone: job.schedule.as_ref().map(|s| s.timezone.name().to_string()),
            next_run: schedule.and_then(|s| s.next_after(now)),
            targets,
        });
    }
    let unprotected = match super::connect(config).await {
        Ok(engine) => match daemon::coverage(&engine, config).await {
            Ok(c) => Some(c.unprotected),
            Err(e) => {
                notes.push(format!("cannot tell which volumes no job covers: {e}"));
                None
            }
        },
        Err(e) => {
            notes.push(format!(
                "cannot tell which volumes no job covers: {}",
                super::chain(&e)
            ));
            None
        }
    };
    let doc = StatusOut {
        from: if state.is_some() {
            "daemon-state".into()
        } else {
            "targets".into()
        },
        state_file: state.as_ref().map(|_| path.display().to_string()),
        jobs,
        unprotected_volumes: unprotected,
        notes,
    };
    if json {
        out_json(&doc);
    } else {
        out(&render_status(&doc));
    }
    Ok(EXIT_OK)
}

/// A job's last backup on one target, read from the target's manifests (no daemon state).
async fn from_manifests(
    config: &Config,
    job: &str,
    target: &str,
    notes: &mut Vec<String>,
) -> TargetStatus {
    let mut ts = TargetStatus {
        target: target.to_string(),
        last_run: None,
        result: None,
        stored_bytes: None,
        duration_ms: None,
        last_success: None,
        error: None,
    };
    let Some(t) = config.targets.get(target) else {
        return ts;
    };
    let listing = match crate::storage::open(t).await {
        Ok(s) => crate::catalog::list(s.as_ref())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match listing {
        Ok(l) => {
            let mine: Vec<_> = l
                .backups
                .iter()
                .filter(|m| m.job == job && !m.is_pre_restore())
                .collect();
            if let Some(m) = mine.last() {
                ts.last_run = Some(m.started_at);
                ts.result = Some(if m.failed.is_empty() { "ok" } else { "partial" }.into());
                ts.stored_bytes = Some(m.total_stored());
                ts.duration_ms =
                    Some((m.finished_at - m.started_at).num_milliseconds().max(0) as u64);
            }
            ts.last_success = mine
                .iter()
                .rev()
                .find(|m| m.failed.is_empty())
                .map(|m| m.finished_at);
        }
        Err(e) => {
            notes.push(format!("target {target}: {e}"));
            ts.error = Some(e);
        }
    }
    ts
}

fn render_status(s: &StatusOut) -> String {
    let mut out = match &s.state_file {
        Some(p) => format!("last runs from the daemon's state ({p})\n"),
        None => {
            "last runs from the targets' manifests (no daemon state in state-dir)\n".to_string()
        }
    };
    let mut rows = vec![vec![
        "JOB".to_string(),
        "TARGET".into(),
        "LAST RUN".into(),
        "RESULT".into(),
        "SIZE".into(),
        "DURATION".into(),
        "NEXT RUN".into(),
    ]];
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    for j in &s.jobs {
        let next = match (&j.schedule, j.next_run) {
            (Some(expr), Some(t)) => format!("{} ({expr})", stamp(t)),
            _ => "- (no schedule)".into(),
        };
        if j.targets.is_empty() {
            rows.push(vec![
                j.job.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                next.clone(),
            ]);
        }
        for t in &j.targets {
            rows.push(vec![
                j.job.clone(),
                t.target.clone(),
                t.last_run.map(stamp).unwrap_or_else(|| "never".into()),
                t.result.clone().unwrap_or_else(|| "-".into()),
                t.stored_bytes.map(human).unwrap_or_else(|| "-".into()),
                t.duration_ms.map(human_ms).unwrap_or_else(|| "-".into()),
                next.clone(),
            ]);
            if let Some(e) = &t.error {
                errors.insert(format!("{}/{}", j.job, t.target), e.clone());
            }
        }
    }
    out.push_str(&table(&rows));
    for (k, e) in errors {
        out.push_str(&format!("error: {k}: {e}\n"));
    }
    match &s.unprotected_volumes {
        Some(v) if v.is_empty() => out.push_str("every named volume is backed up by a job\n"),
        Some(v) => out.push_str(&format!(
            "{} volume(s) no job backs up: {}\n",
            v.len(),
            v.join(", ")
        )),
        None => {}
    }
    for n in &s.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}
