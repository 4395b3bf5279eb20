//! `voltar list` and `voltar show`: read the catalog, render it (tables or `--json`), exit codes.

use std::sync::Arc;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{self, BackupId, Manifest};
use crate::config::{Config, Target};
use crate::storage::Storage;

use super::render::{count, hook_line, human, human_ms, local_time, table};
use super::{chain, out, out_json, ReadTargetsArgs, EXIT_FAILED, EXIT_OK};

/// One target a read command was asked to read: where it is, and its listing or why it could not be read.
struct Read {
    /// The target's location once opened (`/backups`, `s3://bucket/prefix`), else its name.
    target: String,
    listing: Result<catalog::Listing, String>,
}

/// The targets a read command reads (`--target` values, else every target of the job), each listed. A target
/// that cannot be read is in the list with its error; `Err` (exit 2) when none could be read, or for a usage
/// error (a mistyped target name).
async fn read_all(config: &Config, job: Option<&str>, args: &ReadTargetsArgs) -> Result<Vec<Read>> {
    let targets = super::resolve_targets(config, job, &args.as_list())?;
    let mut reads = Vec::new();
    let mut errors = Vec::new();
    for t in &targets {
        let (target, listing) = match open(t).await {
            Ok(store) => {
                let listing = catalog::list(store.as_ref())
                    .await
                    .map_err(anyhow::Error::from);
                (store.describe(), listing)
            }
            Err(e) => (t.name.clone(), Err(e)),
        };
        let listing = listing.map_err(|e| {
            let msg = chain(&e);
            errors.push(e);
            msg
        });
        reads.push(Read { target, listing });
    }
    if reads.iter().all(|r| r.listing.is_err()) {
        return Err(none_readable(errors));
    }
    Ok(reads)
}

async fn open(t: &Target) -> Result<Arc<dyn Storage>> {
    use anyhow::Context;
    crate::storage::open(t)
        .await
        .with_context(|| format!("opening target {}", t.name))
}

/// The error of a read command none of whose targets could be read: the one error as it is, or each target's.
pub(super) fn none_readable(mut errors: Vec<anyhow::Error>) -> anyhow::Error {
    if errors.len() == 1 {
        return errors.remove(0);
    }
    anyhow::anyhow!(
        "no target could be read: {}",
        errors.iter().map(chain).collect::<Vec<_>>().join("; ")
    )
}

/// `voltar list`: the backups in each target (exit 1 when a manifest or a target is unreadable).
pub(super) async fn list(
    config: &Config,
    job: Option<String>,
    target: ReadTargetsArgs,
    json: bool,
) -> Result<i32> {
    let reads = read_all(config, job.as_deref(), &target).await?;
    if json {
        out_json(&list_out(&reads));
    } else {
        out(&render_list(&reads));
    }
    let sound = reads
        .iter()
        .all(|r| r.listing.as_ref().is_ok_and(|l| l.unreadable.is_empty()));
    Ok(if sound { EXIT_OK } else { EXIT_FAILED })
}

/// `list --json`, fields in a fixed order: the targets read (with the error of each that could not be), then
/// every backup, incomplete id and unreadable manifest, each with its target.
#[derive(Serialize)]
struct ListOut<'a> {
    targets: Vec<TargetRead<'a>>,
    backups: Vec<Listed<'a>>,
    /// Ids with objects but no manifest.
    incomplete: Vec<Incomplete<'a>>,
    unreadable: Vec<Unreadable<'a>>,
}

/// A target a read command read, and why it could not when it could not.
#[derive(Serialize)]
struct TargetRead<'a> {
    target: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl<'a> From<&'a Read> for TargetRead<'a> {
    fn from(r: &'a Read) -> TargetRead<'a> {
        TargetRead {
            target: &r.target,
            error: r.listing.as_ref().err().map(String::as_str),
        }
    }
}

#[derive(Serialize)]
struct Incomplete<'a> {
    target: &'a str,
    id: &'a BackupId,
}

#[derive(Serialize)]
struct Unreadable<'a> {
    target: &'a str,
    id: &'a BackupId,
    error: &'a str,
}

/// One backup in `list --json`: its target, then its manifest as `show --json` prints it (the same fields in the
/// same order), with `tags` always there (`[]` when none) for scripts that filter on them.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Listed<'a> {
    target: &'a str,
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

impl<'a> Listed<'a> {
    fn new(target: &'a str, m: &'a Manifest) -> Listed<'a> {
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
            target,
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

fn list_out(reads: &[Read]) -> ListOut<'_> {
    let listed = || {
        reads
            .iter()
            .filter_map(|r| r.listing.as_ref().ok().map(|l| (r.target.as_str(), l)))
    };
    ListOut {
        targets: reads.iter().map(TargetRead::from).collect(),
        backups: listed()
            .flat_map(|(t, l)| l.backups.iter().map(move |m| Listed::new(t, m)))
            .collect(),
        incomplete: listed()
            .flat_map(|(target, l)| {
                l.incomplete
                    .iter()
                    .map(move |(id, _)| Incomplete { target, id })
            })
            .collect(),
        unreadable: listed()
            .flat_map(|(target, l)| {
                l.unreadable
                    .iter()
                    .map(move |(id, error)| Unreadable { target, id, error })
            })
            .collect(),
    }
}

/// `show --json`: the target read, the other targets holding the same backup, the targets that could not be
/// read, then the manifest.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Shown<'a> {
    target: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    also_in: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreadable_targets: Vec<TargetRead<'a>>,
    #[serde(flatten)]
    manifest: &'a Manifest,
}

/// `voltar show`: one backup, from the first target that has it (for `latest`, the newest over all targets),
/// naming the other targets that hold the same backup. Exit 1 when a target could not be read.
pub(super) async fn show(
    config: &Config,
    backup: String,
    sources: Vec<String>,
    job: Option<String>,
    target: ReadTargetsArgs,
    json: bool,
) -> Result<i32> {
    let reads = read_all(config, job.as_deref(), &target).await?;
    let mut found: Vec<(&str, &Manifest)> = Vec::new();
    let mut misses = Vec::new();
    for r in &reads {
        if let Ok(l) = &r.listing {
            match catalog::resolve(l, &backup, None, &sources) {
                Ok(m) => found.push((&r.target, m)),
                Err(e) => misses.push((r.target.as_str(), e)),
            }
        }
    }
    // The newest; on a tie (the same backup in several targets) the first target's.
    let Some((at, m)) = found.iter().copied().reduce(|best, x| {
        if x.1.started_at > best.1.started_at {
            x
        } else {
            best
        }
    }) else {
        return Err(match misses.len() {
            // One target read: its error as it is.
            1 => misses.remove(0).1.into(),
            _ => none_found(&misses),
        });
    };
    if let Some(n) = sources.iter().find(|n| m.source(n).is_none()) {
        anyhow::bail!("backup {} has no source `{n}`", m.id);
    }
    let doc = Shown {
        target: at,
        also_in: found
            .iter()
            .filter(|(t, o)| *t != at && o.id == m.id)
            .map(|(t, _)| *t)
            .collect(),
        unreadable_targets: reads
            .iter()
            .filter(|r| r.listing.is_err())
            .map(TargetRead::from)
            .collect(),
        manifest: m,
    };
    if json {
        out_json(&doc);
    } else {
        out(&render_show(&doc));
    }
    Ok(if doc.unreadable_targets.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// No target read has the backup asked for: each target's reason.
fn none_found(misses: &[(&str, catalog::CatalogError)]) -> anyhow::Error {
    anyhow::anyhow!(
        "{}",
        misses
            .iter()
            .map(|(t, e)| format!("{t}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// A section per target read, in the order given; a target that could not be read says why.
fn render_list(reads: &[Read]) -> String {
    reads
        .iter()
        .map(|r| match &r.listing {
            Ok(l) => render_listing(&r.target, l),
            Err(e) => cannot_read(&r.target, e),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// "cannot read TARGET: why", the target named once (storage errors start with it).
fn cannot_read(target: &str, e: &str) -> String {
    let why = e.strip_prefix(target).and_then(|r| r.strip_prefix(": "));
    format!("cannot read {target}: {}\n", why.unwrap_or(e))
}

/// One target's listing: a heading naming it, the table, incomplete ids and unreadable manifests.
fn render_listing(target: &str, l: &catalog::Listing) -> String {
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

fn render_show(doc: &Shown) -> String {
    let m = doc.manifest;
    let mut out = format!("backup {} in {}\n", m.id, doc.target);
    if !doc.also_in.is_empty() {
        out.push_str(&format!("  also in: {}\n", doc.also_in.join(", ")));
    }
    out += &format!(
        "  job {}  host {}  {}  took {}\n",
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
    // The container hooks run around each source's read (the manifest has no output of theirs, by design).
    for s in &m.sources {
        for h in &s.hooks {
            out.push_str(&hook_line(&s.name, h));
        }
    }
    for s in &m.sources {
        if let Some(d) = &s.dump {
            out.push_str(&format!(
                "dump: {}: {} in container {}, exit {}, {}; restore with --source {} --to-container NAME \
                 (or --to-file PATH)\n",
                s.name,
                d.preset.as_deref().unwrap_or("voltar.dump-command"),
                d.container,
                d.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into()),
                human_ms(d.duration_ms),
                s.name
            ));
        }
    }
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
    for t in &doc.unreadable_targets {
        out.push_str(&cannot_read(t.target, t.error.unwrap_or_default()));
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
        let reads = [Read {
            target: "/backups".into(),
            listing: Ok(listing),
        }];
        let doc = serde_json::to_value(list_out(&reads)).unwrap();
        assert_eq!(doc["backups"][0]["tags"], serde_json::json!([]), "{doc:#}");
        assert_eq!(
            doc["backups"][1]["tags"],
            serde_json::json!(["pre-restore"]),
            "{doc:#}"
        );
        // Field order: the target, then as `show --json` (the manifest), tags included.
        let show = keys(&serde_json::to_string_pretty(&tagged).unwrap());
        assert!(show.contains(&"tags".to_string()), "{show:?}");
        let listed = keys(&serde_json::to_string_pretty(&Listed::new("/b", &tagged)).unwrap());
        assert_eq!(listed[0], "target");
        assert_eq!(listed[1..], show);
        let mut show_plain = keys(&serde_json::to_string_pretty(&plain).unwrap());
        let at = show_plain.iter().position(|k| k == "finished-at").unwrap() + 1;
        show_plain.insert(at, "tags".into());
        let listed_plain = keys(&serde_json::to_string_pretty(&Listed::new("/b", &plain)).unwrap());
        assert_eq!(listed_plain[1..], show_plain);
        // `show --json` of the same backup: its target, then the manifest's fields in order.
        let shown = Shown {
            target: "/b",
            also_in: vec![],
            unreadable_targets: vec![],
            manifest: &tagged,
        };
        let shown = keys(&serde_json::to_string_pretty(&shown).unwrap());
        assert_eq!(shown, listed);
        // The document itself: the targets read first, then the backups.
        let text = serde_json::to_string_pretty(&list_out(&reads)).unwrap();
        assert_eq!(
            keys(&text),
            ["targets", "backups", "incomplete", "unreadable"]
        );
    }
}
