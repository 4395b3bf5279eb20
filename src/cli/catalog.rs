//! `voltar list` and `voltar show`: read the catalog, render it (tables or `--json`), exit codes.

use anyhow::Result;

use crate::catalog::{self, Manifest};
use crate::config::Config;

use super::render::{count, human, human_ms, local_time, table};
use super::{out, out_json, ReadTargetArgs, EXIT_FAILED, EXIT_OK};

/// The target a read command uses, and its listing.
async fn open_listing(
    config: &Config,
    job: Option<String>,
    target: ReadTargetArgs,
) -> Result<(
    std::sync::Arc<dyn crate::storage::Storage>,
    catalog::Listing,
)> {
    let store = super::open_one(config, job.as_deref(), &target.as_list()).await?;
    let listing = catalog::list(store.as_ref()).await?;
    Ok((store, listing))
}

/// `voltar list`: the backups in the target (exit 1 when a manifest is unreadable).
pub(super) async fn list(
    config: &Config,
    job: Option<String>,
    target: ReadTargetArgs,
    json: bool,
) -> Result<i32> {
    let (store, listing) = open_listing(config, job, target).await?;
    if json {
        out_json(&serde_json::json!({
            "target": store.describe(),
            "backups": listing.backups,
            "incomplete": listing.incomplete.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>(),
            "unreadable": listing.unreadable.iter().map(|(id, e)| serde_json::json!({"id": id.to_string(), "error": e})).collect::<Vec<_>>(),
        }));
    } else {
        out(&render_list(&store.describe(), &listing));
    }
    Ok(if listing.unreadable.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// `voltar show`: one backup.
pub(super) async fn show(
    config: &Config,
    backup: String,
    sources: Vec<String>,
    job: Option<String>,
    target: ReadTargetArgs,
    json: bool,
) -> Result<i32> {
    let (store, listing) = open_listing(config, job, target).await?;
    let m = catalog::resolve(&listing, &backup, None, &sources)?;
    if let Some(n) = sources.iter().find(|n| m.source(n).is_none()) {
        anyhow::bail!("backup {} has no source `{n}`", m.id);
    }
    if json {
        out_json(m);
    } else {
        out(&render_show(&store.describe(), m));
    }
    Ok(EXIT_OK)
}

fn render_list(target: &str, l: &catalog::Listing) -> String {
    let mut rows = vec![vec![
        "ID".to_string(),
        "TIME".into(),
        "JOB".into(),
        "SOURCES".into(),
        "BYTES".into(),
        "STORED".into(),
        "TAGS".into(),
    ]];
    for m in &l.backups {
        let mut tags = m.tags.join(",");
        if !m.failed.is_empty() {
            tags.push_str(&format!(
                "{}{} failed",
                if tags.is_empty() { "" } else { "," },
                m.failed.len()
            ));
        }
        if m.encryption.is_some() {
            tags.push_str(if tags.is_empty() {
                "encrypted"
            } else {
                ",encrypted"
            });
        }
        rows.push(vec![
            m.id.to_string(),
            local_time(m.started_at),
            m.job.clone(),
            m.sources.len().to_string(),
            human(m.total_bytes()),
            human(m.total_stored()),
            tags,
        ]);
    }
    let mut out = if l.backups.is_empty() {
        format!("no backups in {target}\n")
    } else {
        format!("{} backup(s) in {target}\n", l.backups.len()) + &table(&rows)
    };
    if !l.incomplete.is_empty() {
        out.push_str(&format!(
            "{} incomplete (no manifest; removed by prune after the grace period): {}\n",
            l.incomplete.len(),
            l.incomplete
                .iter()
                .map(|(i, _)| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (id, e) in &l.unreadable {
        out.push_str(&format!("unreadable: {id}: {e}\n"));
    }
    out
}

fn render_show(target: &str, m: &Manifest) -> String {
    let mut out = format!(
        "backup {} in {target}\n  job {}  host {}  {}  took {}\n",
        m.id,
        m.job,
        m.host,
        local_time(m.started_at),
        human_ms((m.finished_at - m.started_at).num_milliseconds().max(0) as u64)
    );
    if !m.tags.is_empty() {
        out.push_str(&format!("  tags: {}\n", m.tags.join(", ")));
    }
    if let Some(e) = &m.encryption {
        out.push_str(&format!(
            "  encrypted ({}) {}\n",
            e.mode,
            e.recipient_fingerprints.join(" ")
        ));
    }
    let mut rows = vec![vec![
        "SOURCE".to_string(),
        "KIND".into(),
        "FILES".into(),
        "BYTES".into(),
        "STORED".into(),
        "CONTAINERS".into(),
        "SHA256".into(),
    ]];
    for s in &m.sources {
        let containers = s
            .containers
            .iter()
            .map(|c| {
                if c.downtime_ms > 0 {
                    format!("{} ({} {})", c.name, c.action, human_ms(c.downtime_ms))
                } else {
                    c.name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(vec![
            s.name.clone(),
            s.kind.to_string(),
            s.counts.files.to_string(),
            human(s.counts.bytes),
            human(s.stored_bytes),
            if containers.is_empty() {
                "-".into()
            } else {
                containers
            },
            s.sha256[..16.min(s.sha256.len())].to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    for f in &m.failed {
        out.push_str(&format!("failed: {}: {}\n", f.name, f.error));
    }
    for s in m.sources.iter().filter(|s| s.not_archived_count > 0) {
        out.push_str(&format!(
            "incomplete: {}: {} not archived:\n",
            s.name,
            count(s.not_archived_count, "entry", "entries")
        ));
        for e in &s.not_archived {
            out.push_str(&format!("  {e}\n"));
        }
        let listed = s.not_archived.len() as u64;
        if s.not_archived_count > listed {
            out.push_str(&format!(
                "  … and {} more (see the log of that run)\n",
                s.not_archived_count - listed
            ));
        }
    }
    out
}
