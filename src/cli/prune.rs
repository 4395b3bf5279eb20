//! `voltar prune`: flags (as restic's `forget` has them) override the configured policy; the table.

use chrono::Utc;

use crate::config::Policy;
use crate::prune::{run, LeftoverUpload, PruneReport, PruneRequest};
use crate::retention::{format_duration, Action};

/// Arguments of `voltar prune`.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// Prune only this job's backups, with its policy (default: the default job's policy, all jobs' backups
    /// judged per job).
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    #[command(flatten)]
    pub target: super::TargetArgs,
    /// Keep the last N backups.
    #[arg(long, value_name = "N", value_parser = super::whole_number::<u32>)]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N hours that have one.
    #[arg(long, value_name = "N", value_parser = super::whole_number::<u32>)]
    pub keep_hourly: Option<u32>,
    /// Keep the newest backup of each of the last N days that have one.
    #[arg(long, value_name = "N", value_parser = super::whole_number::<u32>)]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N weeks that have one.
    #[arg(long, value_name = "N", value_parser = super::whole_number::<u32>)]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months that have one.
    #[arg(long, value_name = "N", value_parser = super::whole_number::<u32>)]
    pub keep_monthly: Option<u32>,
    /// Keep the newest backup of each of the last N years that have one.
    #[arg(long, value_name = "N", value_parser = super::whole_number::<u32>)]
    pub keep_yearly: Option<u32>,
    /// Keep everything within this duration of the newest backup (e.g. 14d).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Show the decisions, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub wait: super::WaitArgs,
}

pub async fn command(
    config: &crate::config::Config,
    args: PruneArgs,
    json: bool,
    progress: crate::progress::Progress,
) -> anyhow::Result<i32> {
    let targets = super::resolve_targets(config, args.job.as_deref(), &args.target)?;
    config.job(args.job.as_deref())?;
    let flags = args.keep_last.is_some()
        || args.keep_hourly.is_some()
        || args.keep_daily.is_some()
        || args.keep_weekly.is_some()
        || args.keep_monthly.is_some()
        || args.keep_yearly.is_some()
        || args.keep_within.is_some();
    let policy = if flags {
        Some(Policy {
            keep_last: args.keep_last,
            keep_hourly: args.keep_hourly,
            keep_daily: args.keep_daily,
            keep_weekly: args.keep_weekly,
            keep_monthly: args.keep_monthly,
            keep_yearly: args.keep_yearly,
            keep_within: match &args.keep_within {
                Some(w) => Some(chrono::Duration::from_std(
                    crate::config::parse_duration(w)
                        .map_err(|m| anyhow::anyhow!("--keep-within: {m}"))?,
                )?),
                None => None,
            },
        })
    } else {
        None
    };
    let req = PruneRequest {
        targets,
        job: args.job,
        policy,
        dry_run: args.dry_run,
        now: Utc::now(),
        wait: args.wait.start(),
    };
    let reports = run(config, &req, &|h| progress.waiting(&h.waiting_line())).await;
    progress.finish();
    let reports = reports?;
    if json {
        super::out_json(&reports);
    } else {
        for r in &reports {
            super::out(&render(r));
        }
    }
    Ok(if reports.iter().all(PruneReport::is_ok) {
        super::EXIT_OK
    } else {
        super::EXIT_FAILED
    })
}

/// The prune table: one line per backup with its decision and reasons, then incomplete backups, leftover
/// uploads, unreadable manifests, notes, errors and the totals.
pub fn render(r: &PruneReport) -> String {
    let mut out = format!(
        "{}prune {}\n",
        if r.dry_run { "dry-run: " } else { "" },
        r.target
    );
    out.push_str(&super::table(&decision_rows(r)));
    for i in &r.incomplete {
        let action = match (i.action, r.dry_run) {
            (Action::Keep, _) => "kept",
            (Action::Delete, true) => "would be removed",
            (Action::Delete, false) if r.incomplete_removed.contains(&i.id) => "removed",
            (Action::Delete, false) => "not removed (see the error below)",
        };
        out.push_str(&format!(
            "incomplete {} ({}): {action} ({})\n",
            i.id,
            super::render::count(i.objects as u64, "object", "objects"),
            i.reason
        ));
    }
    for u in &r.leftover_uploads {
        out.push_str(&leftover_line(r, u));
    }
    for u in &r.unreadable {
        out.push_str(&format!("unreadable {}: {} (kept)\n", u.id, u.reason));
    }
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    for e in &r.errors {
        out.push_str(&format!(
            "error: {}{}: {}\n",
            e.id.as_ref().map(|i| format!("{i} ")).unwrap_or_default(),
            e.step,
            e.error
        ));
    }
    out.push_str(&totals(r));
    out
}

/// The table's rows: a header, then per backup its id, time, job, action and reasons.
fn decision_rows(r: &PruneReport) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "ID".to_string(),
        "TIME".into(),
        "JOB".into(),
        "ACTION".into(),
        "REASONS".into(),
    ]];
    for d in &r.decisions {
        rows.push(vec![
            d.id.to_string(),
            d.time
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string(),
            d.job.clone(),
            match d.action {
                Action::Keep => "keep".into(),
                Action::Delete => {
                    if r.dry_run {
                        "would delete".into()
                    } else {
                        "delete".into()
                    }
                }
            },
            if d.reasons.is_empty() {
                // `reasons` are the rules that keep a backup; a deleted one matched none of them.
                "matches no keep rule".to_string()
            } else {
                d.reasons.join(", ")
            },
        ]);
    }
    rows
}

/// One leftover upload: its key, size and age, and what became (or would become) of it.
fn leftover_line(r: &PruneReport, u: &LeftoverUpload) -> String {
    let mut what = Vec::new();
    if let Some(n) = u.size {
        what.push(super::human(n));
    }
    if let Some(t) = u.last_activity {
        what.push(format!(
            "last written {} ago",
            format_duration(Utc::now().signed_duration_since(t))
        ));
    }
    format!(
        "leftover upload {}{}: {} (left by an interrupted backup; older than the grace period)\n",
        u.key,
        if what.is_empty() {
            String::new()
        } else {
            format!(" ({})", what.join(", "))
        },
        if r.dry_run {
            "would be removed"
        } else if r
            .errors
            .iter()
            .any(|e| e.step == "sweep interrupted uploads")
        {
            "not removed (see the error below)"
        } else {
            "removed"
        }
    )
}

/// The last line: backups (that would be) deleted, incomplete ones removed, leftover uploads.
fn totals(r: &PruneReport) -> String {
    let mut out = format!(
        "{} backup(s) {}deleted, {} incomplete removed",
        if r.dry_run {
            r.decisions
                .iter()
                .filter(|d| matches!(d.action, Action::Delete))
                .count()
        } else {
            r.deleted.len()
        },
        if r.dry_run { "would be " } else { "" },
        r.incomplete_removed.len()
    );
    if !r.leftover_uploads.is_empty() {
        out.push_str(&format!(
            ", {} leftover upload(s) {}",
            if r.dry_run {
                r.leftover_uploads.len()
            } else {
                r.swept_uploads
            },
            if r.dry_run {
                "would be removed"
            } else {
                "removed"
            }
        ));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::IncompleteDecision;

    /// Issue 10: an incomplete backup's line says what became of it in words ("would be removed"), not the
    /// decision's Rust name ("Delete").
    #[test]
    fn issue10_incomplete_lines_are_in_words() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-28T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let decision = |id: &str, action| IncompleteDecision {
            id: id.parse().unwrap(),
            action,
            objects: 2,
            last_activity: t,
            reason: "why".into(),
        };
        let mut r = PruneReport {
            target: "/b".into(),
            dry_run: true,
            incomplete: vec![
                decision("20261128T030000Z-aaaa", Action::Delete),
                decision("20261128T030000Z-bbbb", Action::Keep),
            ],
            ..PruneReport::default()
        };
        let text = render(&r);
        assert!(
            text.contains("incomplete 20261128T030000Z-aaaa (2 objects): would be removed (why)\n"),
            "{text}"
        );
        assert!(
            text.contains("incomplete 20261128T030000Z-bbbb (2 objects): kept (why)\n"),
            "{text}"
        );
        r.dry_run = false;
        r.incomplete_removed = vec!["20261128T030000Z-aaaa".parse().unwrap()];
        let text = render(&r);
        assert!(
            text.contains("incomplete 20261128T030000Z-aaaa (2 objects): removed (why)\n"),
            "{text}"
        );
        assert!(!text.contains("Delete") && !text.contains("Keep"), "{text}");
    }
}
