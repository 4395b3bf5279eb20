//! `voltar restore`: flags, the report text, failures on stderr, the exit code.

use std::path::PathBuf;

use anyhow::{bail, Result};
use chrono::Utc;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::progress::Progress;
use crate::restore::{self, RestoreOutcome, RestoreReport, RestoreRequest, RestoreStatus};

use super::render::{count, human_ms};
use super::{emit, human, out, out_json, KeyArgs, ReadTargetArgs, EXIT_FAILED, EXIT_OK, JOB_HELP};

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// Backup id or `latest` (see `voltar list`).
    pub backup: Option<String>,
    /// With `latest`: the newest backup taken at or before TIME (RFC 3339, `YYYY-MM-DD[ HH:MM]` local, or an
    /// age such as `2d`).
    #[arg(long, value_name = "TIME")]
    pub before: Option<String>,
    /// Only these sources of the backup (default: all).
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    /// Restore into another volume: a new one (created with the original driver, options and labels), or an
    /// existing empty one (a non-empty one needs --force).
    #[arg(long, value_name = "NAME", conflicts_with = "to_dir")]
    pub to_volume: Option<String>,
    /// Restore into a directory on the host.
    #[arg(long, value_name = "PATH")]
    pub to_dir: Option<PathBuf>,
    /// A database dump (`--source dump@NAME`): stream it into the restore command (psql, mysql, mongorestore,
    /// or the container's voltar.dump-restore-command label) in this running container.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["to_volume", "to_dir", "paths", "archive", "to_file"])]
    pub to_container: Option<String>,
    /// A database dump (`--source dump@NAME`): write it out, decompressed, to this file (0600; --force replaces
    /// an existing one).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["to_volume", "to_dir", "paths", "archive"])]
    pub to_file: Option<PathBuf>,
    /// Restore only these files or directories (relative to the volume root).
    #[arg(long = "path", value_name = "SUBPATH")]
    pub paths: Vec<PathBuf>,
    /// Show what would happen (including files that would be removed) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not take a safety backup of the current contents first.
    #[arg(long)]
    pub no_safety_backup: bool,
    /// Allow --to-dir or --to-volume into a non-empty directory or volume (its contents are replaced).
    #[arg(long)]
    pub force: bool,
    /// Do not flush the restored files to disk before reporting success (faster, like `tar -x`; a power cut soon
    /// after can lose them, the backup itself is untouched). Only where nothing is replaced: a new or empty
    /// directory or volume. A restore that replaces contents always flushes the new tree before the swap.
    #[arg(long, conflicts_with_all = ["to_container", "to_file"])]
    pub no_sync: bool,
    /// Import a plain archive made by other tools (.tar, .tar.gz, .tar.zst) instead of a voltar backup.
    #[arg(long, value_name = "FILE", conflicts_with = "backup")]
    pub archive: Option<PathBuf>,
    /// With --archive: drop N leading path components (after a leading `/` is removed, as GNU tar does).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = super::whole_number::<usize>)]
    pub strip_components: usize,
    #[arg(long, value_name = "NAME", help = JOB_HELP)]
    pub job: Option<String>,
    #[command(flatten)]
    pub target: ReadTargetArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub wait: super::WaitArgs,
}

pub async fn command(
    config: &Config,
    args: RestoreArgs,
    json: bool,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<i32> {
    let mut target = None;
    let mut before = None;
    if args.archive.is_none() {
        let Some(spec) = &args.backup else {
            bail!(
                "which backup? give a backup id or `latest` (see `voltar list`), or --archive FILE"
            );
        };
        before = args
            .before
            .as_deref()
            .map(|b| restore::parse_time(b, Utc::now()))
            .transpose()?;
        if before.is_some() && spec != "latest" {
            bail!("--before only applies to `latest`");
        }
        target = Some(
            super::resolve_targets(config, args.job.as_deref(), &args.target.as_list())?.remove(0),
        );
    }
    let req = RestoreRequest {
        target,
        backup: args.backup,
        before,
        sources: args.sources,
        to_volume: args.to_volume,
        to_dir: args.to_dir,
        to_container: args.to_container,
        to_file: args.to_file,
        paths: args.paths,
        dry_run: args.dry_run,
        no_safety_backup: args.no_safety_backup,
        force: args.force,
        no_sync: args.no_sync,
        archive: args.archive,
        strip_components: args.strip_components,
        job: args.job,
        identities: args.keys.identities,
        passphrase_file: args.keys.passphrase_file,
        wait: args.wait.start(),
    };
    let report = match restore::run(config, req, progress, cancel).await? {
        RestoreOutcome::Report(r) => r,
        RestoreOutcome::ImportPlan { file, destination } => {
            if json {
                out_json(&serde_json::json!({
                    "dry-run": true,
                    "archive": file,
                    "destination": destination,
                }));
            } else {
                out(&format!(
                    "plan: import {} into {destination}\n",
                    file.display()
                ));
            }
            return Ok(EXIT_OK);
        }
    };
    // Also on stderr, so that a failure is seen when stdout goes to a file or with --json.
    for s in &report.sources {
        match &s.status {
            RestoreStatus::Failed(why) => eprintln!(
                "voltar: restoring {} into {} failed: {why}",
                s.source, s.destination
            ),
            RestoreStatus::Unprotected(why) => eprintln!(
                "voltar: restored {} into {}, but without a safety backup: {why}",
                s.source, s.destination
            ),
            _ => {}
        }
    }
    emit(json, &report, render);
    Ok(if report.ok() { EXIT_OK } else { EXIT_FAILED })
}

/// The restore report as text: per source, where it went, what was stopped and restarted, what was restored.
pub fn render(report: &RestoreReport) -> String {
    let mut out = String::new();
    for r in &report.recovered {
        out.push_str(&format!("recovered: {r}\n"));
    }
    if let Some(b) = &report.backup {
        out.push_str(&format!(
            "{}restore from backup {b}\n",
            if report.dry_run { "plan: " } else { "" }
        ));
    }
    for s in &report.sources {
        out.push_str(&format!(
            "{} -> {}{}: {}\n",
            s.source,
            s.destination,
            if s.create_volume { " (new)" } else { "" },
            s.status
        ));
        if s.through_engine {
            let how = if s.create_volume {
                "through the engine (a helper container and the engine's archive API)"
            } else {
                "in place through the engine (staging volume, then a mirror while the users are stopped)"
            };
            out.push_str(&format!(
                "  {} {how}\n",
                if report.dry_run {
                    "would be written"
                } else if matches!(s.status, RestoreStatus::Ok) {
                    "written"
                } else {
                    // Failed or refused: nothing may sound written.
                    "tried"
                }
            ));
        }
        // What a dry run would stop; what a real one did stop (nothing, when it failed before).
        let (stops, what) = if report.dry_run {
            (&s.stop, "to stop and restart")
        } else {
            (&s.stopped, "stopped")
        };
        if !stops.is_empty() {
            out.push_str(&format!("  containers {what}: {}\n", stops.join(", ")));
        }
        for sv in &s.services {
            out.push_str(&format!(
                "  service {}: scaled from {} to {} for {}, {}\n",
                sv.name,
                sv.replicas,
                sv.scaled_to,
                human_ms(sv.downtime_ms),
                match &sv.not_back {
                    None => format!("back at {}", sv.replicas),
                    Some(why) => format!("not scaled back: {why}"),
                }
            ));
        }
        if !s.restarted.is_empty() {
            out.push_str(&format!("  restarted: {}\n", restarted(s)));
        }
        if let Some(c) = &s.command {
            out.push_str(&format!(
                "  {}: {c}\n",
                if report.dry_run {
                    "would stream the dump into"
                } else {
                    "streamed the dump into"
                }
            ));
        }
        if let Some(b) = &s.safety_backup {
            out.push_str(&format!("  safety backup: {b} (tag pre-restore)\n"));
        }
        if let (Some(u), false) = (&s.undo, report.dry_run) {
            out.push_str(&format!("  undo: {u}\n"));
        }
        let is_dump = matches!(
            s.destination,
            restore::Destination::Container(_) | restore::Destination::File(_)
        );
        if is_dump {
            out.push_str(&match (&s.status, report.dry_run) {
                (_, true) => format!("  the dump is {}\n", human(s.counts.bytes)),
                (RestoreStatus::Ok, _) => {
                    format!("  restored the dump, {}\n", human(s.counts.bytes))
                }
                _ => String::new(),
            });
        } else if report.dry_run {
            out.push_str(&format!(
                "  the backup holds {} file(s), {}\n",
                s.counts.files,
                human(s.counts.bytes)
            ));
        } else if matches!(s.status, RestoreStatus::Ok | RestoreStatus::Unprotected(_)) {
            out.push_str(&format!(
                "  restored {} file(s), {}\n",
                s.counts.files,
                human(s.counts.bytes)
            ));
        } else if s.create_volume {
            out.push_str("  nothing was restored; the new volume was removed again\n");
        } else {
            out.push_str("  nothing was changed: the data is as it was before the restore\n");
        }
        if let Some(c) = &s.changes {
            out.push_str(&would_change(c));
        }
        if let Some(r) = &s.would_remove {
            out.push_str(&would_remove(r));
        }
        if let Some(c) = &s.changes {
            out.push_str(&if c.safety_backup_to.is_empty() {
                "  no safety backup (nothing there, or --no-safety-backup)\n".into()
            } else {
                format!(
                    "  a safety backup of what is there now goes to {} (tag pre-restore)\n",
                    c.safety_backup_to.join(", ")
                )
            });
        }
        if let (Some(u), true) = (&s.undo, report.dry_run) {
            out.push_str(&format!("  undo: {u}\n"));
        }
        for w in s.warnings.iter().take(20) {
            out.push_str(&format!("  warning: {w}\n"));
        }
    }
    out
}

/// The restarted containers, each with its downtime.
fn restarted(s: &crate::restore::SourceRestore) -> String {
    let named: Vec<String> = s
        .restarted
        .iter()
        .map(|n| match s.downtime_ms.get(n) {
            Some(ms) => format!("{n} (down {})", super::human_ms(*ms)),
            None => n.clone(),
        })
        .collect();
    named.join(", ")
}

/// Lines shown per list of a dry run; the counts are exact.
const DRY_RUN_SHOWN: usize = 50;

/// The dry run's "would change" (`~`) and "would come back" (`+`) lines, the first [`DRY_RUN_SHOWN`] of each.
fn would_change(c: &crate::restore::DryRunChanges) -> String {
    let mut out = String::new();
    if c.would_change_count > 0 {
        out.push_str(&format!(
            "  {} there now would be set back to the backup's:\n",
            count(c.would_change_count, "entry", "entries")
        ));
        for ch in c.would_change.iter().take(DRY_RUN_SHOWN) {
            out.push_str(&format!("    ~ {} ({})\n", ch.path, ch.differs.join(", ")));
        }
        more(&mut out, c.would_change_count, DRY_RUN_SHOWN);
    }
    if c.would_come_back_count > 0 {
        out.push_str(&format!(
            "  {} missing there now would come back:\n",
            count(c.would_come_back_count, "entry", "entries")
        ));
        for p in c.would_come_back.iter().take(DRY_RUN_SHOWN) {
            out.push_str(&format!("    + {p}\n"));
        }
        more(&mut out, c.would_come_back_count, DRY_RUN_SHOWN);
    }
    if c.would_change_count == 0 && c.would_come_back_count == 0 {
        out.push_str("  every entry of the backup is there now as the backup has it\n");
    }
    out
}

fn more(out: &mut String, total: u64, shown: usize) {
    if total > shown as u64 {
        out.push_str(&format!("    … and {} more\n", total - shown as u64));
    }
}

/// The dry run's "would be removed" lines (the first 50).
fn would_remove(r: &[String]) -> String {
    if r.is_empty() {
        return "  nothing there now would be removed\n".into();
    }
    let mut out = format!(
        "  {} entr{} there now, not in the backup, would be removed:\n",
        r.len(),
        if r.len() == 1 { "y" } else { "ies" }
    );
    for p in r.iter().take(50) {
        out.push_str(&format!("    - {p}\n"));
    }
    if r.len() > 50 {
        out.push_str(&format!("    … and {} more\n", r.len() - 50));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9: the `restore --dry-run` text is rendered from the plan's report.
    #[test]
    fn issue9_dry_run_text_comes_from_the_plan() {
        let report =
            restore::tests::sample_plan().dry_run_report(vec![(vec!["stale.log".into()], None)]);
        assert_eq!(
            render(&report),
            "plan: restore from backup 20261128T030000Z-abcd\n\
             pgdata -> volume pgdata: dry-run\n\
             \x20 containers to stop and restart: db\n\
             \x20 the backup holds 3 file(s), 3.0 KiB\n\
             \x20 1 entry there now, not in the backup, would be removed:\n\
             \x20   - stale.log\n"
        );
    }
}
