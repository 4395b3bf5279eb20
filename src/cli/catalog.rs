//! `voltar list` and `voltar show`: read the catalog, render it (tables or `--json`), exit codes.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{self, BackupId, Manifest};
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
        out_json(&list_out(&store.describe(), &listing));
    } else {
        out(&render_list(&store.describe(), &listing));
    }
    Ok(if listing.unreadable.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// `list --json`, fields in a fixed order.
#[derive(Serialize)]
struct ListOut<'a> {
    target: &'a str,
    backups: Vec<Listed<'a>>,
    /// Ids with objects but no manifest.
    incomplete: Vec<&'a BackupId>,
    unreadable: Vec<Unreadable<'a>>,
}

#[derive(Serialize)]
struct Unreadable<'a> {
    id: &'a BackupId,
    error: &'a str,
}

/// One backup in `list --json`: its manifest as `show --json` prints it (the same fields in the same order),
/// with `tags` always there (`[]` when none) for scripts that filter on them.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Listed<'a> {
    format: u32,
    tool: &'a str,
    id: &'a BackupId,
    job: &'a str,
    host: &'a str,
    started_at: &'a DateTime<Utc>,
    finished_at: &'a DateTime<Utc>,
    tags: &'a [String],
    sources: &'a [catalog::SourceRecord],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    failed: &'a [catalog::FailedSource],
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<&'a catalog::EncryptionRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seal: Option<&'a str>,
}

impl<'a> From<&'a Manifest> for Listed<'a> {
    fn from(m: &'a Manifest) -> Listed<'a> {
        // Every field named: a new manifest field does not compile until it is listed here too.
        let Manifest {
            format,
            tool,
            id,
            job,
            host,
            started_at,
            finished_at,
            tags,
            sources,
            failed,
            encryption,
            seal,
        } = m;
        Listed {
            format: *format,
            tool,
            id,
            job,
            host,
            started_at,
            finished_at,
            tags,
            sources,
            failed,
            encryption: encryption.as_ref(),
            seal: seal.as_deref(),
        }
    }
}

fn list_out<'a>(target: &'a str, l: &'a catalog::Listing) -> ListOut<'a> {
    ListOut {
        target,
        backups: l.backups.iter().map(Listed::from).collect(),
        incomplete: l.incomplete.iter().map(|(id, _)| id).collect(),
        unreadable: l
            .unreadable
            .iter()
            .map(|(id, error)| Unreadable { id, error })
            .collect(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of the top-level object of pretty JSON, in order.
    fn keys(pretty: &str) -> Vec<String> {
        pretty
            .lines()
            .filter_map(|l| l.strip_prefix("  \""))
            .filter_map(|l| l.split_once("\":").map(|(k, _)| k.to_string()))
            .collect()
    }

    /// Issue 10: `list --json` gives each backup in `show --json`'s field order, with its tags (`[]` when none),
    /// and its own fields in a fixed order.
    #[test]
    fn issue10_list_json_has_tags_and_the_order_of_show() {
        let mut tagged = crate::restore::tests::sample_plan().manifest;
        let plain = tagged.clone();
        tagged.tags = vec!["pre-restore".into()];
        let listing = catalog::Listing {
            backups: vec![plain.clone(), tagged.clone()],
            incomplete: vec![],
            unreadable: vec![],
        };
        let doc = serde_json::to_value(list_out("/backups", &listing)).unwrap();
        assert_eq!(doc["backups"][0]["tags"], serde_json::json!([]), "{doc:#}");
        assert_eq!(
            doc["backups"][1]["tags"],
            serde_json::json!(["pre-restore"]),
            "{doc:#}"
        );
        // Field order: as `show --json` (the manifest), tags included.
        let show = keys(&serde_json::to_string_pretty(&tagged).unwrap());
        assert!(show.contains(&"tags".to_string()), "{show:?}");
        let listed = keys(&serde_json::to_string_pretty(&Listed::from(&tagged)).unwrap());
        assert_eq!(listed, show);
        let mut show_plain = keys(&serde_json::to_string_pretty(&plain).unwrap());
        let at = show_plain.iter().position(|k| k == "finished-at").unwrap() + 1;
        show_plain.insert(at, "tags".into());
        let listed_plain = keys(&serde_json::to_string_pretty(&Listed::from(&plain)).unwrap());
        assert_eq!(listed_plain, show_plain);
        // The document itself: target first, then the backups.
        let text = serde_json::to_string_pretty(&list_out("/backups", &listing)).unwrap();
        assert_eq!(
            keys(&text),
            ["target", "backups", "incomplete", "unreadable"]
        );
    }
}
