//! `voltar config check`: everything a night's run needs, checked now, each with its own verdict. Built from what
//! the run itself does, never a second version of it: the loader's secret-file rules
//! ([`crate::config::read_secret_file`]), [`Encryptor::from_config`], [`Engine::connect`], [`storage::open`] and
//! [`crate::storage::Storage::check`] with the target's `check-timeout` (the same probe a backup makes before it
//! touches a container, removed again), and [`backup::plan_for`] for what each job selects.
//!
//! Nothing here quiesces a container, takes a lock or writes anything but the targets' own check probe. A parse
//! error is not a check: the config did not load, and the face exits 2 with the loader's message as for every
//! other command.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup;
use crate::catalog::SourceKind;
use crate::config::{Config, Job, Target, TargetKind};
use crate::crypto::Encryptor;
use crate::docker::Engine;
use crate::schedule::Schedule;
use crate::storage;

/// One verdict: what was checked, whether it passed, and what was found (on failure: why, and the fix).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `config`, `encryption`, `secret FILE`, `engine`, `target NAME`, `job NAME`.
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// Every verdict, in the order they were made.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub checks: Vec<Check>,
}

fn verdict(check: impl Into<String>, r: Result<String, String>) -> Check {
    let (ok, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check {
        check: check.into(),
        ok,
        detail,
    }
}

/// Check the jobs `jobs` (every job when empty) of a loaded `config`; `now` for each schedule's next run.
pub async fn run(config: &Config, jobs: &[&Job], now: DateTime<Utc>) -> CheckReport {
    let mut checks = Vec::new();
    checks.push(verdict(
        "config",
        Ok(match &config.source {
            Some(p) => format!(
                "{} read: keys, schedules and durations are valid",
                p.display()
            ),
            None => "no config file found: built-in defaults".into(),
        }),
    ));

    checks.push(verdict(
        "encryption",
        match Encryptor::from_config(&config.encryption) {
            Ok(None) => Ok("off: backups are stored unencrypted".into()),
            Ok(Some(_)) if !config.encryption.recipients.is_empty() => Ok(format!(
                "{} recipient(s) parse",
                config.encryption.recipients.len()
            )),
            Ok(Some(_)) => Ok("passphrase file is readable".into()),
            Err(e) => Err(format!("{e} (fix [encryption])")),
        },
    ));

    // The targets of the jobs checked, each once.
    let names: BTreeSet<&str> = jobs
        .iter()
        .flat_map(|j| j.targets.iter().map(String::as_str))
        .collect();
    let targets: Vec<&Target> = names
        .iter()
        .filter_map(|n| config.targets.get(*n))
        .collect();

    // Secret files of the targets (notification secrets are read when the config loads).
    for t in &targets {
        if let TargetKind::S3(s) = &t.kind {
            for f in [&s.access_key_id_file, &s.secret_access_key_file]
                .into_iter()
                .flatten()
            {
                checks.push(verdict(
                    format!("secret {}", f.display()),
                    crate::config::read_secret_file(f)
                        .map(|_| format!("readable, only by its owner (target {})", t.name))
                        .map_err(|e| format!("{e} (target {})", t.name)),
                ));
            }
        }
    }

    let engine = match Engine::connect(config.docker_host.as_deref()).await {
        Ok(e) => {
            checks.push(verdict("engine", Ok("the Docker Engine answers".into())));
            Some(e)
        }
        Err(e) => {
            // The engine's error already says where it looked and what to set.
            checks.push(verdict("engine", Err(e.to_string())));
            None
        }
    };

    // All targets at once, each within its own check-timeout, as a run does.
    let probes = futures::future::join_all(targets.iter().map(|t| check_target(t))).await;
    for (t, r) in targets.iter().zip(probes) {
        checks.push(verdict(format!("target {}", t.name), r));
    }

    for job in jobs {
        checks.push(verdict(
            format!("job {}", job.name),
            check_job(config, engine.as_ref(), job, now).await,
        ));
    }

    CheckReport {
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// Open `t` and make the test write a backup makes before it touches anything.
async fn check_target(t: &Target) -> Result<String, String> {
    let fix = match &t.kind {
        TargetKind::Local { .. } => format!(
            " (make `path` of [target.{}] a directory voltar can create and write)",
            t.name
        ),
        TargetKind::S3(_) => format!(
            " (fix `endpoint`, `bucket` or the credentials of [target.{}], or raise its check-timeout)",
            t.name
        ),
    };
    let store = storage::open(t)
        .await
        .map_err(|e| format!("target {} cannot be opened: {e}{fix}", t.name))?;
    store
        .check(t.check_timeout())
        .await
        .map_err(|e| format!("target {} failed its check: {e}{fix}", t.name))?;
    Ok(format!(
        "{}: a test write was stored and removed",
        store.describe()
    ))
}

/// What `job` would do: its sources (there must be one), targets and schedule.
async fn check_job(
    config: &Config,
    engine: Option<&Engine>,
    job: &Job,
    now: DateTime<Utc>,
) -> Result<String, String> {
    if job.targets.is_empty() {
        return Err(format!(
            "job {} has no target: set `targets` in [job.{}] or configure a [target.NAME]",
            job.name, job.name
        ));
    }
    let Some(engine) = engine else {
        return Err(format!(
            "job {}: its sources cannot be found without the engine (see the engine line)",
            job.name
        ));
    };
    let plan = backup::plan_for(engine, job, &[], &config.state_dir)
        .await
        .map_err(|e| format!("job {}: {e}", job.name))?;
    let volumes = plan
        .sources
        .iter()
        .filter(|s| s.kind == SourceKind::Volume)
        .count();
    let binds = plan.sources.len() - volumes;
    if plan.sources.is_empty() {
        return Err(format!(
            "job {}: its selection matches no volume or bind mount (fix `include`/`exclude` or the bind-mount keys of its [selection], or label what to back up voltar.backup=true; `voltar plan --job {}` shows what was skipped and why)",
            job.name, job.name
        ));
    }
    let schedule = match &job.schedule {
        None => "no schedule (runs only by `voltar backup`)".to_string(),
        Some(s) => match Schedule::of(s) {
            Ok(sched) => {
                let next = sched
                    .next_after(now)
                    .map(|t| {
                        t.with_timezone(&sched.zone())
                            .format("%Y-%m-%d %H:%M")
                            .to_string()
                    })
                    .unwrap_or_else(|| "never".into());
                format!("schedule {} {}, next {next}", sched.expr(), sched.zone())
            }
            Err(e) => return Err(format!("job {}: schedule: {e}", job.name)),
        },
    };
    Ok(format!(
        "job {}: {volumes} volume(s), {binds} bind mount(s), targets {}; {schedule}",
        job.name,
        job.targets.join(", ")
    ))
}
