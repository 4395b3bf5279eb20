//! `voltar plan` and `voltar backup`: run them, render the plan and the run summary (tables or `--json`), exit codes.

use anyhow::Result;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::backup::{self, BackupRequest, RunReport, SourceReport, Status, TargetReport};
use crate::config::{Config, DEFAULT_JOB};
use crate::notify::Notifier;
use crate::progress::Progress;

use super::render::{count, hook_line, human, human_ms, table};
use super::{out, out_json, TargetArgs, EXIT_FATAL, EXIT_OK};

/// `voltar plan`: the plan, with each source's size unless `no_size`.
pub(super) async fn plan(
    config: &Config,
    job: Option<String>,
    only: Vec<String>,
    no_size: bool,
    json: bool,
) -> Result<i32> {
    let engine = super::connect(config).await?;
    let job = config.job(job.as_deref())?;
    let plan = crate::backup::plan_for(&engine, job, &only, &config.state_dir).await?;
    let sizes = if no_size {
        None
    } else {
        Some(crate::sizes::of_sources(&plan).await?)
    };
    // How each source will be read: its host path, or through the engine (`[docker] data-path`).
    let vias: Vec<Option<Result<crate::catalog::ReadVia, String>>> = plan
        .sources
        .iter()
        .map(|s| {
            s.dump
                .is_none()
                .then(|| crate::backup::read_via(config.data_path, s))
        })
        .collect();
    if json {
        // Fields in the order of the plan's own JSON (as in `backup --json`), with each source's size.
        #[derive(serde::Serialize)]
        struct SizedSource<'a> {
            #[serde(flatten)]
            source: &'a crate::plan::PlannedSource,
            #[serde(skip_serializing_if = "Option::is_none")]
            size: Option<u64>,
            /// How it will be read (`[docker] data-path`); none for a dump.
            #[serde(rename = "read-via", skip_serializing_if = "Option::is_none")]
            read_via: Option<crate::catalog::ReadVia>,
        }
        #[derive(serde::Serialize)]
        struct PlanOut<'a> {
            #[serde(flatten)]
            setup: Setup,
            sources: Vec<SizedSource<'a>>,
            skipped: &'a [crate::plan::SkippedSource],
            #[serde(rename = "running-in", skip_serializing_if = "Option::is_none")]
            running_in: Option<&'a str>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            groups: &'a [crate::plan::QuiesceGroup],
        }
        let doc = PlanOut {
            setup: setup(config, job),
            sources: plan
                .sources
                .iter()
                .enumerate()
                .map(|(i, source)| SizedSource {
                    source,
                    size: sizes.as_ref().and_then(|v| v.get(i).copied().flatten()),
                    read_via: vias[i].as_ref().and_then(|v| v.as_ref().ok().copied()),
                })
                .collect(),
            skipped: &plan.skipped,
            running_in: plan.running_in.as_deref(),
            groups: &plan.groups,
        };
        out_json(&doc);
    } else {
        let mut text = render_setup(&setup(config, job)) + &render_plan(&plan, sizes.as_deref());
        for (s, via) in plan.sources.iter().zip(&vias) {
            match via {
                Some(Ok(crate::catalog::ReadVia::Engine)) => text.push_str(&format!(
                    "{}: read through the engine (a helper container; [docker] data-path = {})\n",
                    s.name, config.data_path
                )),
                Some(Err(why)) => text.push_str(&format!("{}: cannot be read: {why}\n", s.name)),
                _ => {}
            }
        }
        out(&text);
    }
    Ok(EXIT_OK)
}

/// What `voltar plan` says about the setup before the sources: the config file, the job, its targets (where, no
/// secrets), encryption and retention.
#[derive(serde::Serialize)]
struct Setup {
    /// The config file read; `None`: none found, built-in defaults.
    config: Option<String>,
    job: String,
    targets: Vec<SetupTarget>,
    encryption: SetupEncryption,
    /// The job's retention policy in words, and each target's where it has its own.
    retention: String,
    #[serde(rename = "target-retention", skip_serializing_if = "Vec::is_empty")]
    target_retention: Vec<SetupTarget>,
    /// Pruning after each backup.
    prune: bool,
    /// No keep-* rules: nothing to prune by.
    #[serde(skip)]
    keeps_all: bool,
}

#[derive(serde::Serialize)]
struct SetupTarget {
    name: String,
    /// Where it is (a target) or its retention in words (`target-retention`).
    #[serde(rename = "location")]
    what: String,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct SetupEncryption {
    enabled: bool,
    recipients: usize,
    passphrase_file: bool,
}

fn setup(config: &Config, job: &crate::config::Job) -> Setup {
    let targets: Vec<&crate::config::Target> = job
        .targets
        .iter()
        .filter_map(|n| config.targets.get(n))
        .collect();
    Setup {
        config: config.source.as_ref().map(|p| p.display().to_string()),
        job: job.name.clone(),
        targets: targets
            .iter()
            .map(|t| SetupTarget {
                name: t.name.clone(),
                what: location(t),
            })
            .collect(),
        encryption: SetupEncryption {
            enabled: config.encryption.enabled(),
            recipients: config.encryption.recipients.len(),
            passphrase_file: config.encryption.passphrase_file.is_some(),
        },
        retention: policy_words(&job.retention.policy),
        target_retention: targets
            .iter()
            .filter(|t| t.retention.is_some())
            .map(|t| SetupTarget {
                name: t.name.clone(),
                what: policy_words(&t.effective_retention(&job.retention).policy),
            })
            .collect(),
        prune: job.prune,
        keeps_all: job.retention.policy.is_empty(),
    }
}

fn render_setup(s: &Setup) -> String {
    let mut out = match &s.config {
        Some(p) => format!("config: {p}\n"),
        None => "config: none found: built-in defaults\n".into(),
    };
    out.push_str(&format!("job: {}\n", s.job));
    if s.targets.is_empty() {
        out.push_str("targets: none configured (pass --target to backup)\n");
    } else {
        out.push_str("targets:\n");
        for t in &s.targets {
            out.push_str(&format!("  {}: {}\n", t.name, t.what));
        }
    }
    let e = &s.encryption;
    out.push_str(&if e.recipients > 0 {
        format!("encryption: {} recipients (age)\n", e.recipients)
    } else if e.passphrase_file {
        "encryption: passphrase (from passphrase-file)\n".into()
    } else {
        "encryption: off\n".into()
    });
    out.push_str(&format!(
        "retention: {}{}\n",
        s.retention,
        if s.prune || s.keeps_all {
            ""
        } else {
            " (not pruned after backups)"
        }
    ));
    for t in &s.target_retention {
        out.push_str(&format!("  on {}: {}\n", t.name, t.what));
    }
    out.push('\n');
    out
}

/// Where a target is, without secrets: a directory, or `s3://bucket/prefix` with its endpoint (no user or
/// password) and region.
fn location(t: &crate::config::Target) -> String {
    use crate::config::TargetKind;
    match &t.kind {
        TargetKind::Local { path, prefix } => {
            if prefix.is_empty() {
                path.display().to_string()
            } else {
                path.join(prefix).display().to_string()
            }
        }
        TargetKind::S3(s) => {
            let mut l = format!("s3://{}/{}", s.bucket, s.prefix);
            if let Some(ep) = &s.endpoint {
                l.push_str(&format!(" at {}", without_userinfo(ep)));
            }
            if let Some(r) = &s.region {
                l.push_str(&format!(" ({r})"));
            }
            l
        }
    }
}

/// A URL without its `user:password@`.
fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(host_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// A retention policy in words: "keep the last 3, 7 daily, 4 weekly, and all within 2d".
pub(super) fn policy_words(p: &crate::config::Policy) -> String {
    if p.is_empty() {
        return "keep everything (no keep-* rules)".into();
    }
    let mut parts = Vec::new();
    if let Some(n) = p.keep_last {
        parts.push(format!("the last {n}"));
    }
    for (n, what) in [
        (p.keep_hourly, "hourly"),
        (p.keep_daily, "daily"),
        (p.keep_weekly, "weekly"),
        (p.keep_monthly, "monthly"),
        (p.keep_yearly, "yearly"),
    ] {
        if let Some(n) = n {
            parts.push(format!("{n} {what}"));
        }
    }
    if let Some(d) = p.keep_within {
        parts.push(format!("all within {}", span(d)));
    }
    let last = parts.pop().expect("a rule");
    if parts.is_empty() {
        format!("keep {last}")
    } else {
        format!("keep {}, and {last}", parts.join(", "))
    }
}

/// A span as the config writes it: `2d`, `12h`, `30m`, `45s`.
fn span(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        _ if s % 86400 == 0 => format!("{}d", s / 86400),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// The flags of `voltar backup`.
pub(super) struct BackupFlags {
    pub job: Option<String>,
    pub target: TargetArgs,
    pub only: Vec<String>,
    pub dry_run: bool,
    pub no_prune: bool,
    /// `--wait`, started when the command started.
    pub wait: Option<crate::lock::Wait>,
}

/// `voltar backup`: the run's summary table (`--quiet`: only when something failed), or the plan (`--dry-run`).
/// The job's receivers (`healthcheck-url`, `[[notify]]`) hear of the start and the end of a real run, with the
/// JSON summary `--json` prints (also when the run fails as a whole: then the `{"error", "exit-code"}` document);
/// a notification that fails is a warning and never changes the exit code. A dry run, and a run interrupted by a
/// signal (whoever sent it knows, and it must stop promptly), send no end notification.
pub(super) async fn backup(
    config: &Config,
    flags: BackupFlags,
    json: bool,
    quiet: bool,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<i32> {
    let notifier = (!flags.dry_run)
        .then(|| {
            let job = config
                .job(flags.job.as_deref())
                .map(|j| j.name.clone())
                .unwrap_or_else(|_| flags.job.clone().unwrap_or_else(|| DEFAULT_JOB.into()));
            Notifier::for_job(config, &job)
        })
        .filter(|n| !n.is_empty());
    if let Some(n) = &notifier {
        // A signal stops the waiting at once (the run then ends as interrupted before touching anything).
        tokio::select! {
            _ = n.started() => {}
            _ = cancel.cancelled() => {}
        }
    }
    let dry_run = flags.dry_run;
    let result = run(config, flags, progress.clone(), cancel.clone()).await;
    progress.finish();
    let (code, summary) = match &result {
        Ok(report) => {
            let summary = summary_json(report);
            if json {
                out(&summary);
            } else if dry_run {
                let sizes = crate::sizes::of_sources(&report.plan).await?;
                out(&render_plan(&report.plan, Some(&sizes)));
            } else if !(quiet && report.exit_code() == EXIT_OK) {
                // `--quiet` (cron): silent on success, the full summary when something failed.
                out(&render_run(report));
            }
            (report.exit_code(), summary)
        }
        // The document `--json` prints for a run that ended without a report (see `cli::main`).
        Err(e) => (
            EXIT_FATAL,
            format!(
                "{}\n",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "error": super::chain(e), "exit-code": EXIT_FATAL })
                )
                .expect("serializable")
            ),
        ),
    };
    if let Some(n) = &notifier {
        if !cancel.is_cancelled() {
            // Failures are logged (warnings naming each receiver, redacted) by the notifier itself. A signal
            // while they are sent ends the waiting: the run is over, the process must go.
            tokio::select! {
                _ = n.finished(code == EXIT_OK, &summary) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }
    result.map(|_| code)
}

/// One run, from flags to report.
async fn run(
    config: &Config,
    flags: BackupFlags,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<RunReport> {
    let BackupFlags {
        job,
        target,
        only,
        dry_run,
        no_prune,
        wait,
    } = flags;
    let targets = super::resolve_targets(config, job.as_deref(), &target)?;
    let engine = super::connect(config).await?;
    let mut jobcfg = config.job(job.as_deref())?.clone();
    if no_prune {
        jobcfg.prune = false;
    }
    let env = backup::Env {
        config,
        engine: &engine,
        progress,
        cancel,
        now: Utc::now(),
        wait,
    };
    let req = BackupRequest {
        job: jobcfg,
        targets,
        only,
        dry_run,
        tags: vec![],
    };
    Ok(backup::run(&env, &req).await?)
}

/// The run's summary as `backup --json` prints it (pretty, with a final newline): rendered once, printed and
/// sent to the receivers as it is.
pub(super) fn summary_json(report: &RunReport) -> String {
    let mut s = serde_json::to_string_pretty(&RunOut {
        status: overall(report),
        report,
    })
    .expect("serializable");
    s.push('\n');
    s
}

/// `backup --json`: the run's report behind its overall status.
#[derive(serde::Serialize)]
struct RunOut<'a> {
    status: Overall,
    #[serde(flatten)]
    report: &'a RunReport,
}

/// The outcome of a whole run, in step with its exit code: `ok` is exit 0 (also for `--dry-run`), the others
/// exit 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Overall {
    /// Every source stored whole on every target (and pruned as configured).
    Ok,
    /// Something was committed, but not everything: a source failed or was skipped, a target was not written,
    /// or pruning failed.
    Partial,
    /// Every source stored on every target, but some source misses entries (`not-archived`).
    Incomplete,
    /// Nothing was committed: no target took the backup, or no source could be stored.
    Failed,
}

fn overall(r: &RunReport) -> Overall {
    if r.exit_code() == EXIT_OK {
        return Overall::Ok;
    }
    let committed = r.targets.iter().any(|t| t.committed);
    let stored = r
        .sources
        .iter()
        .any(|s| matches!(s.status, Status::Ok | Status::Partial | Status::Incomplete));
    let sources_whole = r
        .sources
        .iter()
        .all(|s| matches!(s.status, Status::Ok | Status::Incomplete));
    let targets_ok = r
        .targets
        .iter()
        .all(|t| t.committed && t.error.is_none() && t.prune.as_ref().is_none_or(|p| p.is_ok()));
    if !committed || !stored {
        Overall::Failed
    } else if !sources_whole || !targets_ok {
        Overall::Partial
    } else {
        // Exit 1 with every source stored everywhere: some source is incomplete.
        Overall::Incomplete
    }
}

fn render_plan(plan: &crate::plan::Plan, sizes: Option<&[Option<u64>]>) -> String {
    let mut rows = vec![vec![
        "SOURCE".to_string(),
        "KIND".into(),
        "SIZE".into(),
        "CONTAINER".into(),
        "PROJECT/SERVICE".into(),
        "STATE".into(),
        "MOUNT".into(),
        "ACTION".into(),
    ]];
    for (i, s) in plan.sources.iter().enumerate() {
        let size = sizes
            .and_then(|v| v.get(i).copied().flatten())
            .map(human)
            .unwrap_or_else(|| "-".into());
        let name = source_label(&s.name, s.containers.iter().map(|c| c.name.as_str()));
        if s.containers.is_empty() {
            rows.push(vec![
                name.clone(),
                s.kind.to_string(),
                size.clone(),
                "-".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
        }
        for (j, c) in s.containers.iter().enumerate() {
            let ps = match (&c.compose_project, &c.compose_service) {
                (Some(p), Some(sv)) => format!("{p}/{sv}"),
                _ => String::new(),
            };
            rows.push(vec![
                if j == 0 { name.clone() } else { String::new() },
                if j == 0 {
                    s.kind.to_string()
                } else {
                    String::new()
                },
                if j == 0 { size.clone() } else { String::new() },
                c.name.clone(),
                ps,
                c.state.clone(),
                match (s.kind, c.rw) {
                    (crate::catalog::SourceKind::Dump, _) => "-".into(),
                    (_, true) => "rw".into(),
                    (_, false) => "ro".into(),
                },
                format!("{} ({})", c.action, c.reason),
            ]);
        }
    }
    let mut out = running_in(plan);
    out.push_str(&format!("{} source(s) to back up:\n", plan.sources.len()));
    out.push_str(&table(&rows));
    out.push_str(&group_lines(plan));
    out.push_str(&plan_hook_lines(plan));
    for s in &plan.sources {
        for sv in &s.services {
            out.push_str(&format!(
                "swarm: {}: {} ({}; tasks {})\n",
                s.name,
                sv.describe(),
                sv.reason,
                sv.tasks.join(", ")
            ));
        }
    }
    if !plan.skipped.is_empty() {
        out.push_str(&format!("\n{} skipped:\n", plan.skipped.len()));
        let mut rows = vec![vec!["SOURCE".to_string(), "KIND".into(), "REASON".into()]];
        for s in &plan.skipped {
            rows.push(vec![
                source_label(&s.name, s.used_by.iter().map(String::as_str)),
                s.kind.to_string(),
                s.reason.clone(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// One line per quiesce group: its sources, and what made it a group.
fn group_lines(plan: &crate::plan::Plan) -> String {
    plan.groups
        .iter()
        .map(|g| {
            let names: Vec<String> = g
                .sources
                .iter()
                .map(|n| source_label(n, std::iter::empty()))
                .collect();
            if g.sources.len() > 1 {
                format!(
                    "group {}: {} read in one quiesce window ({})\n",
                    g.name,
                    names.join(", "),
                    g.from
                )
            } else {
                format!(
                    "group {}: {} (the only source of the group selected: read on its own; {})\n",
                    g.name,
                    names.join(", "),
                    g.from
                )
            }
        })
        .collect()
}

/// A source's name in a table: an anonymous volume's 64 hex digits shortened to 12, with the containers that use
/// it (`3f2a5b6c7d8e… (anonymous, used by web)`; `--json` has the whole name).
fn source_label<'a>(name: &str, users: impl Iterator<Item = &'a str>) -> String {
    if !crate::plan::is_anonymous(name) {
        return name.to_string();
    }
    let users: Vec<&str> = users.collect();
    if users.is_empty() {
        format!("{}… (anonymous, unused)", &name[..12])
    } else {
        format!("{}… (anonymous, used by {})", &name[..12], users.join(", "))
    }
}

/// The one line saying that voltar's own container's mounts are left out.
fn running_in(plan: &crate::plan::Plan) -> String {
    match &plan.running_in {
        Some(c) => format!("running in container {c}: its own mounts are not backed up\n"),
        None => String::new(),
    }
}

fn ratio(bytes: u64, stored: u64) -> String {
    if stored == 0 || bytes == 0 {
        "-".into()
    } else {
        format!("{:.2}x", bytes as f64 / stored as f64)
    }
}

/// Entries not archived shown per source in the summary table's footer.
const NOT_ARCHIVED_SHOWN: usize = 10;

fn render_run(r: &RunReport) -> String {
    let mut rows = vec![vec![
        "SOURCE".to_string(),
        "FILES".into(),
        "BYTES IN".into(),
        "STORED".into(),
        "RATIO".into(),
        "TIME".into(),
        "DOWNTIME".into(),
        "STATUS".into(),
    ]];
    let shared = shared_errors(r);
    for s in &r.sources {
        let downtime = s
            .services
            .iter()
            .map(service_downtime)
            .chain(
                s.containers
                    .iter()
                    .filter(|c| c.downtime_ms > 0)
                    .map(|c| format!("{} {} {}", c.name, c.action, human_ms(c.downtime_ms))),
            )
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(vec![
            source_label(&s.name, s.containers.iter().map(|c| c.name.as_str())),
            s.counts.files.to_string(),
            human(s.counts.bytes),
            human(s.stored_bytes),
            ratio(s.counts.bytes, s.stored_bytes),
            human_ms(s.read_ms),
            if downtime.is_empty() {
                "-".into()
            } else {
                downtime
            },
            status_cell(s, &shared),
        ]);
    }
    let mut out = format!("backup {} (job {})\n", r.id, r.job);
    out.push_str(&running_in(&r.plan));
    out.push_str(&table(&rows));
    // Entries missing from an archive first: they are why a source is incomplete (the list is capped per source,
    // the count is exact).
    for s in r.sources.iter().filter(|s| s.not_archived_count > 0) {
        out.push_str(&not_archived_lines(s));
    }
    for s in &r.sources {
        for h in &s.hooks {
            out.push_str(&hook_line(&s.name, h));
        }
    }
    out.push_str(&shared_lines(&shared));
    out.push_str(&warning_lines(r));
    for t in &r.targets {
        out.push_str(&target_lines(t));
    }
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    for n in &r.recovered {
        out.push_str(&format!("recovered: {n}\n"));
    }
    out
}

/// A scaled service in the DOWNTIME column: "service web scaled 2→0 1.4 s", and what went wrong after.
pub(super) fn service_downtime(s: &crate::catalog::ServiceRecord) -> String {
    let mut out = format!(
        "service {} scaled {}→{} {}",
        s.name,
        s.replicas,
        s.scaled_to,
        human_ms(s.downtime_ms)
    );
    if let Some(why) = &s.not_back {
        out.push_str(&format!(" (not scaled back: {why})"));
    }
    out
}

/// The hooks of the plan's containers, one line each, with what decided them.
fn plan_hook_lines(plan: &crate::plan::Plan) -> String {
    let mut out = String::new();
    for s in &plan.sources {
        for c in &s.containers {
            let Some(h) = &c.hooks else { continue };
            for (phase, hook) in [
                ("pre-backup", &h.pre_backup),
                ("post-backup", &h.post_backup),
            ] {
                if let Some(hook) = hook {
                    out.push_str(&format!(
                        "hook: {}: {} {phase} `{}`{} (timeout {}, on error {}; {})\n",
                        s.name,
                        c.name,
                        hook.command,
                        hook.user
                            .as_ref()
                            .map(|u| format!(" as {u}"))
                            .unwrap_or_default(),
                        humantime::format_duration(h.timeout),
                        h.on_error,
                        hook.from
                    ));
                }
            }
            if let Some(p) = &h.problem {
                out.push_str(&format!("hook: {}: {} PROBLEM: {p}\n", s.name, c.name));
            }
        }
    }
    out
}

/// Warning lines shown in the summary; the rest are counted (`--json` has them all).
const WARNINGS_SHOWN: usize = 20;

/// Each warning once: a text that several sources have is one line naming them all.
fn warning_lines(r: &RunReport) -> String {
    let mut seen: Vec<(&str, Vec<&str>)> = Vec::new();
    for s in &r.sources {
        for w in &s.warnings {
            match seen.iter_mut().find(|(t, _)| t == w) {
                Some((_, names)) if names.contains(&s.name.as_str()) => {}
                Some((_, names)) => names.push(&s.name),
                None => seen.push((w, vec![&s.name])),
            }
        }
    }
    let mut out = String::new();
    for (w, names) in seen.iter().take(WARNINGS_SHOWN) {
        out.push_str(&format!("warning: {}: {w}\n", names.join(", ")));
    }
    if seen.len() > WARNINGS_SHOWN {
        out.push_str(&format!(
            "… and {} more warning(s) (--json lists them)\n",
            seen.len() - WARNINGS_SHOWN
        ));
    }
    out
}

/// An error in the STATUS column: a source's own, or a target's for that source.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Shown<'a> {
    /// The target it happened on, or `None` for the source's own error.
    target: Option<&'a str>,
    error: &'a str,
}

/// The errors that several rows have: printed once below the table, with the number of rows, and named in
/// the rows as "(see below)".
fn shared_errors(r: &RunReport) -> Vec<(Shown<'_>, usize)> {
    let mut seen: Vec<(Shown, usize)> = Vec::new();
    for s in &r.sources {
        let own = s.error.as_deref().filter(|_| s.status == Status::Failed);
        let errors = own
            .map(|error| Shown {
                target: None,
                error,
            })
            .into_iter()
            .chain(s.target_errors.iter().map(|(t, e)| Shown {
                target: Some(t),
                error: e,
            }));
        for e in errors {
            match seen.iter_mut().find(|(x, _)| *x == e) {
                Some((_, n)) => *n += 1,
                None => seen.push((e, 1)),
            }
        }
    }
    seen.retain(|(_, n)| *n > 1);
    seen
}

fn shared_lines(shared: &[(Shown, usize)]) -> String {
    let mut out = String::new();
    for (e, n) in shared {
        match e.target {
            None => out.push_str(&format!("failed ({n} sources): {}\n", e.error)),
            Some(t) => out.push_str(&format!("not stored on {t} ({n} sources): {}\n", e.error)),
        }
    }
    out
}

/// The STATUS cell of a source's row. An error several rows share is named "(see below)".
fn status_cell(s: &SourceReport, shared: &[(Shown, usize)]) -> String {
    let is_shared = |e: Shown| shared.iter().any(|(x, _)| *x == e);
    // "TARGET: ERROR", or "TARGET (see below)".
    let on = |(t, e): (&String, &String)| {
        let e = Shown {
            target: Some(t),
            error: e,
        };
        if is_shared(e) {
            format!("{t} (see below)")
        } else {
            format!("{t}: {}", e.error)
        }
    };
    match s.status {
        Status::Ok => "ok".to_string(),
        Status::Partial => format!(
            "partial: {}",
            s.target_errors
                .iter()
                .map(on)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Status::Incomplete => {
            let mut t = format!(
                "INCOMPLETE: {} not archived",
                count(s.not_archived_count, "entry", "entries")
            );
            for te in &s.target_errors {
                t.push_str(&format!("; not stored on {}", on(te)));
            }
            t
        }
        Status::Failed => {
            let e = s.error.as_deref().unwrap_or_default();
            if is_shared(Shown {
                target: None,
                error: e,
            }) {
                "FAILED (see below)".into()
            } else {
                format!("FAILED: {e}")
            }
        }
        Status::Skipped => "skipped".into(),
    }
}

/// The entries of source `s` that are not in its archive, the first [`NOT_ARCHIVED_SHOWN`] of them by name.
fn not_archived_lines(s: &SourceReport) -> String {
    let mut out = String::new();
    for e in s.not_archived.iter().take(NOT_ARCHIVED_SHOWN) {
        out.push_str(&format!("not archived: {}: {e}\n", s.name));
    }
    let shown = s.not_archived.len().min(NOT_ARCHIVED_SHOWN) as u64;
    if s.not_archived_count > shown {
        out.push_str(&format!(
            "not archived: {}: … and {} more (--json and `voltar show` list up to {})\n",
            s.name,
            s.not_archived_count - shown,
            backup::NOT_ARCHIVED_LISTED
        ));
    }
    out
}

/// Whether the run was committed on target `t`, and what its prune did.
fn target_lines(t: &TargetReport) -> String {
    let state = if t.committed {
        "committed".to_string()
    } else {
        format!("NOT committed: {}", t.error.clone().unwrap_or_default())
    };
    let mut out = format!("target {}: {state}\n", t.location);
    if t.committed {
        if let Some(e) = &t.error {
            out.push_str(&format!("  error: {e}\n"));
        }
    }
    if let Some(p) = &t.prune {
        out.push_str(&format!(
            "  pruned: {} deleted, {} kept\n",
            p.deleted.len(),
            p.decisions.len().saturating_sub(p.deleted.len())
        ));
    }
    if let Some(why) = &t.prune_skipped {
        out.push_str(&format!("  prune skipped: {why}\n"));
    }
    out
}
