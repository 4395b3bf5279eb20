//! Retention: pure logic. [`plan`]`(settings, backups, now, tz)` → one keep/delete [`Decision`] per backup, each
//! with the reasons that kept it. No I/O here; `prune` lists the target, calls [`plan`] and applies the result.
//!
//! # Semantics (restic/borg, made explicit)
//!
//! * Retention is per source. The rules below run once for each source over that source's *series* — the
//!   backups that hold it (a source that failed in a run is not in that backup) — and a backup is kept while
//!   any of its sources keeps it. So `keep-last 1` after a full backup of A and B and a partial `--only A` run
//!   keeps the partial one (A's newest) *and* the full one (B's newest). Rejected alternative: judging whole
//!   backups, where a partial run takes the slots of the full ones and B loses its only backup.
//! * Backups are judged newest first; the time of a backup is its manifest's `started_at`. Ties are broken by
//!   id, so the result never depends on the order backups are listed in.
//! * `keep-last N` keeps the N newest backups.
//! * `keep-hourly/daily/weekly/monthly/yearly N` walk the backups newest first and keep a backup when its bucket
//!   (its hour, day, ISO week, month or year in the configured time zone) differs from the bucket of the last
//!   backup this rule kept, until the rule has kept N. In effect: the newest backup of each of the N newest
//!   buckets that hold a backup. Each rule counts on its own: a backup kept by `daily` still counts for
//!   `weekly` (reasons read `daily 3/7, weekly 1/4`).
//! * `keep-within D` keeps every backup at most D older than the **newest backup** (not `now`), like restic and
//!   rustic. Rejected alternative: measuring from `now` would delete the whole window once backups stop running
//!   (a broken job, a full disk) — exactly when the last good backups matter most.
//! * Buckets are computed in the configured zone (default: the machine's local zone). Days, months and years
//!   are calendar ones, so a day is 23 or 25 hours long across a DST change. An hour bucket is a *real* hour:
//!   the bucket is the real instant its local hour began, so on the fall-back night the repeated local hour
//!   02:00–02:59 is two buckets and `keep-hourly` never merges two backups taken an hour apart. Weeks are ISO weeks (Monday–Sunday, the week
//!   of Dec 29 2025 is 2026-W01), so a week is never split at New Year.
//!
//! # Safety rules on top of the policy
//!
//! * An empty policy keeps everything (reason `no policy`).
//! * Backups tagged `pre-restore` (the safety copy a restore takes) are judged only by their own rule — keep the
//!   newest `pre_restore_keep_last`, and all taken within `pre_restore_keep_within` of **now** (a safety copy is
//!   worth keeping for a while after the restore, whether or not backups keep running). They neither count
//!   toward nor take slots from the regular rules.
//! * Backups dated more than [`FUTURE_TOLERANCE`] after `now` (clock skew, or a wrong clock when they were
//!   taken) are never deleted, are reported in the notes, and are left out of the rules entirely: counting them
//!   would let a bogus date take a `keep-last` slot or move the `keep-within` anchor.
//! * The newest (non-future) regular backup of every source is always kept (reason `newest`), and so is the
//!   newest backup of all if that is a pre-restore one, whatever the policy says. When a source's newest
//!   backup is *incomplete* (entries that existed could not be archived), its newest complete backup is kept
//!   too (reason `newest complete`): an incomplete run never pushes out the last good copy.
//! * If the rules would keep none of a source's regular backups (e.g. every `keep-*` is 0), the policy is taken
//!   to be a mistake: nothing of that series is deleted and the notes say why. The same holds for a source with
//!   only pre-restore backups when their rule keeps none.
//! * The `pre-restore` rule also runs per source (a safety copy holds the one volume it protected).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use serde::Serialize;

use crate::catalog::{BackupId, Manifest};
use crate::config::{Policy, Retention};

/// How far after `now` a backup may be dated and still count as a normal one (small clock differences between
/// hosts writing to one target). Later than this, it is future-dated: kept and reported.
pub const FUTURE_TOLERANCE: Duration = Duration::minutes(5);

/// One committed backup as retention sees it (built from its manifest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Candidate {
    pub id: BackupId,
    /// The job that wrote it; `prune` plans each job's backups separately.
    pub job: String,
    pub time: DateTime<Utc>,
    pub pre_restore: bool,
    /// The sources stored in it, with their content bytes: each source's backups are a series of their own
    /// (see the module docs). Sources that failed in that run are not in it.
    pub sources: BTreeMap<String, u64>,
    /// Sources stored incomplete (entries that existed could not be archived).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub incomplete: BTreeSet<String>,
}

impl Candidate {
    pub fn from_manifest(m: &Manifest) -> Candidate {
        Candidate {
            id: m.id.clone(),
            job: m.job.clone(),
            time: m.started_at,
            pre_restore: m.is_pre_restore(),
            sources: m
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.counts.bytes))
                .collect(),
            incomplete: m
                .sources
                .iter()
                .filter(|s| s.not_archived_count > 0)
                .map(|s| s.name.clone())
                .collect(),
        }
    }

    /// Content bytes of all its sources.
    pub fn total_bytes(&self) -> u64 {
        self.sources.values().sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Keep,
    Delete,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Keep => "keep",
            Action::Delete => "delete",
        })
    }
}

/// What happens to one backup, and why. `reasons` lists what kept it (e.g. `daily 3/7`, `within 14d`,
/// `newest`); it is empty exactly when the action is [`Action::Delete`] (no rule kept it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Decision {
    pub id: BackupId,
    pub job: String,
    pub time: DateTime<Utc>,
    pub pre_restore: bool,
    /// The sources the backup holds.
    pub sources: Vec<String>,
    pub action: Action,
    pub reasons: Vec<String>,
}

/// The outcome of [`plan`]: one decision per candidate, newest first, plus notes for the user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RetentionPlan {
    pub decisions: Vec<Decision>,
    pub notes: Vec<String>,
}

impl RetentionPlan {
    /// The decisions to delete, newest first.
    pub fn deletions(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.action == Action::Delete)
    }
}

/// Plan retention in the zone the settings name, or the machine's local zone when they name none.
pub fn plan_configured(
    settings: &Retention,
    candidates: &[Candidate],
    now: DateTime<Utc>,
) -> RetentionPlan {
    match settings.timezone {
        Some(tz) => plan(settings, candidates, now, &tz),
        None => plan(settings, candidates, now, &chrono::Local),
    }
}

/// Newest first; equal times by id (descending), then by the remaining fields, so that the order is total and
/// the plan does not depend on the order of `candidates`.
fn newest_first(a: &Candidate, b: &Candidate) -> Ordering {
    b.time
        .cmp(&a.time)
        .then_with(|| b.id.cmp(&a.id))
        .then_with(|| a.pre_restore.cmp(&b.pre_restore))
        .then_with(|| a.sources.cmp(&b.sources))
        .then_with(|| a.incomplete.cmp(&b.incomplete))
        .then_with(|| a.job.cmp(&b.job))
}

/// A bucket: one real hour / calendar day / ISO week / month / year, as a comparable key.
type Bucket = (i64, u32, u32);

fn hour_bucket<Z: TimeZone>(t: &DateTime<Z>) -> Bucket {
    // The real instant the local hour began. The repeated hour of a fall-back night is two buckets (it began
    // twice), and where a DST jump is not a whole hour (Chatham +12:45 → +13:45 at 02:45) the local hour 03:45
    // that follows 02:44 is the same real hour, not a new 15-minute bucket.
    let into_hour = i64::from(t.minute()) * 60 + i64::from(t.second());
    (t.timestamp() - into_hour, 0, 0)
}
fn day_bucket<Z: TimeZone>(t: &DateTime<Z>) -> Bucket {
    (i64::from(t.year()), t.month(), t.day())
}
fn week_bucket<Z: TimeZone>(t: &DateTime<Z>) -> Bucket {
    let w = t.iso_week();
    (i64::from(w.year()), w.week(), 0)
}
fn month_bucket<Z: TimeZone>(t: &DateTime<Z>) -> Bucket {
    (i64::from(t.year()), t.month(), 0)
}
fn year_bucket<Z: TimeZone>(t: &DateTime<Z>) -> Bucket {
    (i64::from(t.year()), 0, 0)
}

/// `14d`, `36h`, `1d12h`, `90s`: compact, for reasons.
pub fn format_duration(d: Duration) -> String {
    let mut s = d.num_seconds();
    if s <= 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

/// Decide, for every candidate, keep or delete — and why. Pure: the result depends only on the arguments.
/// `tz` is the zone buckets are computed in (tests pass explicit zones; see [`plan_configured`]).
///
/// The rules run once per source, over the backups that hold that source (its *series*); a backup is kept
/// while any of its sources keeps it. With more than one series, each reason names its source (`pgdata: last
/// 1/7`), so a dry run says which source needs a backup.
pub fn plan<Z: TimeZone>(
    settings: &Retention,
    candidates: &[Candidate],
    now: DateTime<Utc>,
    tz: &Z,
) -> RetentionPlan {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| newest_first(a, b));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); sorted.len()];
    let mut notes = Vec::new();

    let horizon = now + FUTURE_TOLERANCE;
    let future: Vec<bool> = sorted.iter().map(|c| c.time > horizon).collect();
    let by_source = by_source(&sorted, &future);
    let series = series(&by_source);
    let several = series.len() > 1;

    if settings.policy.is_empty() && !series.is_empty() {
        notes.push("no retention policy is set: every backup is kept".into());
    }
    for (source, idx) in &series {
        let own = judge_series(settings, &sorted, idx, now, tz);
        if own.deletes_all {
            let of = if several && !source.is_empty() {
                format!(" of {source}")
            } else {
                String::new()
            };
            notes.push(format!(
                "the retention policy would delete every backup{of} ({}): nothing of it is deleted; \
                 check the keep-* settings (a rule of 0 keeps nothing)",
                idx.len()
            ));
        }
        for (i, rs) in own.reasons.into_iter().enumerate() {
            reasons[i].extend(rs.into_iter().map(|r| {
                if several && !source.is_empty() {
                    format!("{source}: {r}")
                } else {
                    r
                }
            }));
        }
    }
    keep_newest_complete(&sorted, &by_source, several, &mut reasons);

    // The newest backup of all survives too (it may be a pre-restore one).
    if let Some(i) = (0..sorted.len()).find(|&i| !future[i]) {
        if !reasons[i].iter().any(|r| r == "newest") {
            reasons[i].push("newest".into());
        }
    }
    for (i, c) in sorted.iter().enumerate() {
        if future[i] {
            reasons[i].push("future-dated (clock skew): never deleted".into());
            notes.push(format!(
                "backup {} is dated {} ({} after now): check the clock of the host that wrote it; \
                 it is never deleted and not counted by the rules",
                c.id,
                c.time.to_rfc3339(),
                format_duration(c.time - now)
            ));
        }
    }
    RetentionPlan {
        decisions: decisions(&sorted, reasons),
        notes,
    }
}

/// Source → indices into `sorted` of its non-future backups, newest first. A backup that names no source (none
/// are written, but a hand-made manifest could) is a series of its own, named "".
fn by_source<'a>(sorted: &[&'a Candidate], future: &[bool]) -> BTreeMap<&'a str, Vec<usize>> {
    let mut by_source: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in sorted.iter().enumerate() {
        if future[i] {
            continue;
        }
        if c.sources.is_empty() {
            by_source.entry("").or_default().push(i);
        }
        for name in c.sources.keys() {
            by_source.entry(name.as_str()).or_default().push(i);
        }
    }
    by_source
}

/// The series to judge, each named by its sources. Sources held by exactly the same backups decide alike: they
/// are judged once, so that the common case (every run backs up every source) reads `last 1/7`, not the same
/// reason once per source.
fn series(by_source: &BTreeMap<&str, Vec<usize>>) -> Vec<(String, Vec<usize>)> {
    let mut grouped: BTreeMap<Vec<usize>, Vec<&str>> = BTreeMap::new();
    for (name, idx) in by_source {
        grouped.entry(idx.clone()).or_default().push(name);
    }
    grouped
        .into_iter()
        .map(|(idx, names)| (names.join(", "), idx))
        .collect()
}

/// What one series' rules keep: reasons per index into `sorted` (empty for backups outside the series).
struct SeriesJudgement {
    reasons: Vec<Vec<String>>,
    /// The rules kept none of it, so all of it is kept (the policy is taken to be a mistake).
    deletes_all: bool,
}

/// Run the rules over one series (`idx`, indices into `sorted`, newest first): the regular rules over its
/// regular backups, the pre-restore rule over its safety copies, the "would delete everything" guard, and its
/// newest regular backup kept whatever the policy says.
fn judge_series<Z: TimeZone>(
    settings: &Retention,
    sorted: &[&Candidate],
    idx: &[usize],
    now: DateTime<Utc>,
    tz: &Z,
) -> SeriesJudgement {
    let (pre, regular): (Vec<usize>, Vec<usize>) =
        idx.iter().copied().partition(|&i| sorted[i].pre_restore);
    let mut own: Vec<Vec<String>> = vec![Vec::new(); sorted.len()];
    let mut deletes_all = false;
    if settings.policy.is_empty() {
        for &i in idx {
            own[i].push("no policy".into());
        }
    } else {
        apply_regular_rules(&settings.policy, sorted, &regular, tz, &mut own);
        apply_pre_restore_rule(settings, sorted, &pre, now, &mut own);
        let kept = |idx: &[usize]| idx.iter().any(|&i| !own[i].is_empty());
        deletes_all = if regular.is_empty() {
            !pre.is_empty() && !kept(&pre)
        } else {
            !kept(&regular)
        };
        if deletes_all {
            for &i in idx {
                own[i].push("policy would delete every backup".into());
            }
        }
    }
    // The newest regular backup of every source survives whatever the policy says.
    if let Some(&i) = regular.first() {
        own[i].push("newest".into());
    }
    SeriesJudgement {
        reasons: own,
        deletes_all,
    }
}

/// A source whose newest backup is incomplete (entries could not be archived) keeps its newest complete one
/// too: an incomplete run must not push the last good copy out.
fn keep_newest_complete(
    sorted: &[&Candidate],
    by_source: &BTreeMap<&str, Vec<usize>>,
    several: bool,
    reasons: &mut [Vec<String>],
) {
    for (name, idx) in by_source {
        let mut regular = idx.iter().copied().filter(|&i| !sorted[i].pre_restore);
        let Some(newest) = regular.next() else {
            continue;
        };
        if !sorted[newest].incomplete.contains(*name) {
            continue;
        }
        if let Some(i) = regular.find(|&i| !sorted[i].incomplete.contains(*name)) {
            let reason = if several {
                format!("{name}: newest complete")
            } else {
                "newest complete".to_string()
            };
            reasons[i].push(reason);
        }
    }
}

/// One decision per candidate, in `sorted`'s order: kept exactly when something gave a reason.
fn decisions(sorted: &[&Candidate], reasons: Vec<Vec<String>>) -> Vec<Decision> {
    sorted
        .iter()
        .zip(reasons)
        .map(|(c, reasons)| Decision {
            id: c.id.clone(),
            job: c.job.clone(),
            time: c.time,
            pre_restore: c.pre_restore,
            sources: c.sources.keys().cloned().collect(),
            action: if reasons.is_empty() {
                Action::Delete
            } else {
                Action::Keep
            },
            reasons,
        })
        .collect()
}

fn apply_regular_rules<Z: TimeZone>(
    policy: &Policy,
    sorted: &[&Candidate],
    regular: &[usize],
    tz: &Z,
    reasons: &mut [Vec<String>],
) {
    if let Some(n) = policy.keep_last {
        for (k, &i) in regular.iter().take(n as usize).enumerate() {
            reasons[i].push(format!("last {}/{n}", k + 1));
        }
    }
    type KeyFn<Z> = fn(&DateTime<Z>) -> Bucket;
    let rules: [(&str, Option<u32>, KeyFn<Z>); 5] = [
        ("hourly", policy.keep_hourly, hour_bucket::<Z>),
        ("daily", policy.keep_daily, day_bucket::<Z>),
        ("weekly", policy.keep_weekly, week_bucket::<Z>),
        ("monthly", policy.keep_monthly, month_bucket::<Z>),
        ("yearly", policy.keep_yearly, year_bucket::<Z>),
    ];
    for (name, n, key) in rules {
        let Some(n) = n else { continue };
        let mut last: Option<Bucket> = None;
        let mut count = 0u32;
        for &i in regular {
            if count >= n {
                break;
            }
            let b = key(&sorted[i].time.with_timezone(tz));
            if last != Some(b) {
                count += 1;
                last = Some(b);
                reasons[i].push(format!("{name} {count}/{n}"));
            }
        }
    }
    if let (Some(d), Some(&newest)) = (policy.keep_within, regular.first()) {
        let from = sorted[newest].time - d;
        for &i in regular {
            if sorted[i].time < from {
                break;
            }
            reasons[i].push(format!("within {}", format_duration(d)));
        }
    }
}

fn apply_pre_restore_rule(
    settings: &Retention,
    sorted: &[&Candidate],
    pre: &[usize],
    now: DateTime<Utc>,
    reasons: &mut [Vec<String>],
) {
    let n = settings.pre_restore_keep_last;
    for (k, &i) in pre.iter().take(n as usize).enumerate() {
        reasons[i].push(format!("pre-restore last {}/{n}", k + 1));
    }
    // A window too large for chrono (absurd config) keeps everything rather than failing.
    let within = Duration::from_std(settings.pre_restore_keep_within).ok();
    let from = within.and_then(|w| now.checked_sub_signed(w));
    let label = within.map_or_else(|| "ever".to_string(), format_duration);
    for &i in pre {
        if from.is_none_or(|f| sorted[i].time >= f) {
            reasons[i].push(format!("pre-restore within {label}"));
        }
    }
}

/// Decide whether pruning may run after a backup: not when the new backup is empty, nor when any of its sources
/// is more than `max_shrink` (a fraction, 0..=1) smaller than in that source's own previous backup.
/// `previous` maps each source of `new` to (the id of its previous backup with content, its bytes there); a
/// source with no earlier backup is not compared. `Err` carries the reason to report, naming the source.
pub fn shrink_check(
    new: &Candidate,
    previous: &BTreeMap<String, (BackupId, u64)>,
    max_shrink: f64,
) -> Result<(), String> {
    if new.total_bytes() == 0 {
        return Err(format!(
            "backup {} is empty (0 bytes of content): pruning skipped so no older backup is lost; \
             check that the volumes are mounted and selected",
            new.id
        ));
    }
    for (source, &bytes) in &new.sources {
        let Some((prev_id, prev_bytes)) = previous.get(source) else {
            continue;
        };
        let prev_bytes = *prev_bytes;
        if prev_bytes == 0 || bytes >= prev_bytes {
            continue;
        }
        let shrink = 1.0 - bytes as f64 / prev_bytes as f64;
        if shrink > max_shrink {
            return Err(format!(
                "source {source} holds {bytes} bytes in backup {}, {:.0}% less than in its previous backup \
                 {prev_id} ({prev_bytes} bytes), more than max-shrink {:.0}%: pruning skipped; check the data, \
                 then run `voltar prune`",
                new.id,
                shrink * 100.0,
                max_shrink * 100.0
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDateTime;
    use chrono_tz::Tz;
    use std::collections::{BTreeMap, BTreeSet};

    const BERLIN: Tz = chrono_tz::Europe::Berlin;
    const UTC: Tz = chrono_tz::UTC;
    const FMT: &str = "%Y-%m-%d %H:%M";

    /// `"2026-10-25 01:40"`, read as UTC.
    fn t(s: &str) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(s, FMT)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .and_utc()
    }

    fn id_at(time: DateTime<Utc>, n: usize) -> BackupId {
        format!("{}-{:04x}", time.format("%Y%m%dT%H%M%SZ"), n)
            .parse()
            .unwrap()
    }

    /// A backup of the one source `vol` holding `total_bytes`.
    fn cand_at(time: DateTime<Utc>, n: usize, pre_restore: bool, total_bytes: u64) -> Candidate {
        cand_of(time, n, pre_restore, &[("vol", total_bytes)])
    }

    /// A backup of the given sources (name, bytes).
    fn cand_of(
        time: DateTime<Utc>,
        n: usize,
        pre_restore: bool,
        sources: &[(&str, u64)],
    ) -> Candidate {
        Candidate {
            id: id_at(time, n),
            job: "job".into(),
            time,
            pre_restore,
            sources: sources.iter().map(|(s, b)| (s.to_string(), *b)).collect(),
            incomplete: BTreeSet::new(),
        }
    }

    fn cands(times: &[&str]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(n, s)| cand_at(t(s), n, false, 100))
            .collect()
    }

    /// Chatham springs forward from 02:45 (+12:45) to 03:45 (+13:45): 02:14 and 03:45 local are 31 real minutes
    /// apart, in the same real hour (13:15Z–14:15Z). keep-hourly 2 keeps the newer of them and the backup of
    /// the hour before, not two backups 31 minutes apart (found by the property test below).
    #[test]
    fn hourly_is_a_real_hour_where_dst_jumps_mid_hour() {
        let tz: chrono_tz::Tz = "Pacific/Chatham".parse().unwrap();
        let c = cands(&["2024-09-28 12:10", "2024-09-28 13:29", "2024-09-28 14:00"]);
        let p = plan(
            &with(Policy {
                keep_hourly: Some(2),
                ..none()
            }),
            &c,
            t("2024-09-29 00:00"),
            &tz,
        );
        assert_eq!(
            kept_times(&p),
            vec!["2024-09-28 12:10", "2024-09-28 14:00"],
            "{:#?}",
            p.decisions
        );
    }

    fn with(policy: Policy) -> Retention {
        Retention {
            policy,
            ..Retention::default()
        }
    }

    fn none() -> Policy {
        Policy::default()
    }

    /// Times of the kept backups, oldest first, as `FMT` strings.
    fn kept_times(p: &RetentionPlan) -> Vec<String> {
        let mut v: Vec<String> = p
            .decisions
            .iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| d.time.format(FMT).to_string())
            .collect();
        v.sort();
        v
    }

    struct Case {
        name: &'static str,
        policy: Policy,
        tz: Tz,
        backups: &'static [&'static str],
        /// (now, the backups kept at that clock)
        clocks: &'static [(&'static str, &'static [&'static str])],
    }

    fn run(cases: &[Case]) {
        for c in cases {
            let backups = cands(c.backups);
            for (now, expected) in c.clocks {
                let p = plan(&with(c.policy.clone()), &backups, t(now), &c.tz);
                let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
                expected.sort();
                assert_eq!(
                    kept_times(&p),
                    expected,
                    "case `{}` at {now} ({}): {:#?}",
                    c.name,
                    c.tz,
                    p.decisions
                );
                for d in &p.decisions {
                    assert_eq!(d.action == Action::Keep, !d.reasons.is_empty(), "{d:?}");
                }
            }
        }
    }

    const SIX_DAYS: &[&str] = &[
        "2026-05-01 12:00",
        "2026-05-02 12:00",
        "2026-05-03 12:00",
        "2026-05-04 12:00",
        "2026-05-05 12:00",
        "2026-05-06 12:00",
    ];

    #[test]
    fn keep_last_at_two_clocks() {
        run(&[Case {
            name: "last 3",
            policy: Policy {
                keep_last: Some(3),
                ..none()
            },
            tz: UTC,
            backups: SIX_DAYS,
            clocks: &[
                (
                    "2026-05-06 13:00",
                    &["2026-05-04 12:00", "2026-05-05 12:00", "2026-05-06 12:00"],
                ),
                // May 5 and 6 are in the future at this clock: kept, and not counted by `last`.
                (
                    "2026-05-04 12:00",
                    &[
                        "2026-05-02 12:00",
                        "2026-05-03 12:00",
                        "2026-05-04 12:00",
                        "2026-05-05 12:00",
                        "2026-05-06 12:00",
                    ],
                ),
            ],
        }]);
    }

    #[test]
    fn keep_hourly_at_two_clocks() {
        run(&[Case {
            name: "hourly 3",
            policy: Policy {
                keep_hourly: Some(3),
                ..none()
            },
            tz: UTC,
            backups: &[
                "2026-05-01 10:00",
                "2026-05-01 10:30",
                "2026-05-01 11:15",
                "2026-05-01 12:05",
                "2026-05-01 12:50",
                "2026-05-01 13:10",
            ],
            clocks: &[
                (
                    "2026-05-01 14:00",
                    &["2026-05-01 11:15", "2026-05-01 12:50", "2026-05-01 13:10"],
                ),
                (
                    "2026-05-01 12:30",
                    &[
                        "2026-05-01 10:30",
                        "2026-05-01 11:15",
                        "2026-05-01 12:05",
                        "2026-05-01 12:50",
                        "2026-05-01 13:10",
                    ],
                ),
            ],
        }]);
    }

    const YEAR_END: &[&str] = &[
        "2025-12-30 08:00",
        "2025-12-30 20:00",
        "2025-12-31 08:00",
        "2025-12-31 23:30",
        "2026-01-01 00:30",
        "2026-01-01 12:00",
    ];

    #[test]
    fn keep_daily_across_new_year_in_two_zones() {
        let daily3 = Policy {
            keep_daily: Some(3),
            ..none()
        };
        run(&[
            Case {
                name: "daily 3, UTC",
                policy: daily3.clone(),
                tz: UTC,
                backups: YEAR_END,
                clocks: &[
                    (
                        "2026-01-02 00:00",
                        &["2025-12-30 20:00", "2025-12-31 23:30", "2026-01-01 12:00"],
                    ),
                    (
                        "2026-01-01 00:00",
                        &[
                            "2025-12-30 20:00",
                            "2025-12-31 23:30",
                            "2026-01-01 00:30",
                            "2026-01-01 12:00",
                        ],
                    ),
                ],
            },
            // 2025-12-31 23:30 UTC is already New Year's Day in Berlin.
            Case {
                name: "daily 3, Berlin",
                policy: daily3,
                tz: BERLIN,
                backups: YEAR_END,
                clocks: &[
                    (
                        "2026-01-02 00:00",
                        &["2025-12-30 20:00", "2025-12-31 08:00", "2026-01-01 12:00"],
                    ),
                    (
                        "2026-01-01 00:00",
                        &[
                            "2025-12-30 20:00",
                            "2025-12-31 08:00",
                            "2025-12-31 23:30",
                            "2026-01-01 00:30",
                            "2026-01-01 12:00",
                        ],
                    ),
                ],
            },
        ]);
    }

    #[test]
    fn keep_monthly_across_new_year_in_two_zones() {
        const B: &[&str] = &[
            "2025-11-15 12:00",
            "2025-11-30 12:00",
            "2025-12-01 12:00",
            "2025-12-31 23:30",
            "2026-01-01 00:30",
        ];
        let monthly2 = Policy {
            keep_monthly: Some(2),
            ..none()
        };
        const EARLY: (&str, &[&str]) = (
            "2025-12-15 00:00",
            &[
                "2025-11-30 12:00",
                "2025-12-01 12:00",
                "2025-12-31 23:30",
                "2026-01-01 00:30",
            ],
        );
        run(&[
            Case {
                name: "monthly 2, UTC",
                policy: monthly2.clone(),
                tz: UTC,
                backups: B,
                clocks: &[
                    (
                        "2026-01-10 00:00",
                        &["2025-12-31 23:30", "2026-01-01 00:30"],
                    ),
                    EARLY,
                ],
            },
            Case {
                name: "monthly 2, Berlin",
                policy: monthly2,
                tz: BERLIN,
                backups: B,
                clocks: &[
                    (
                        "2026-01-10 00:00",
                        &["2025-12-01 12:00", "2026-01-01 00:30"],
                    ),
                    EARLY,
                ],
            },
        ]);
    }

    #[test]
    fn keep_yearly_across_new_year_in_two_zones() {
        const B: &[&str] = &[
            "2024-06-01 12:00",
            "2025-03-01 12:00",
            "2025-12-31 23:30",
            "2026-01-01 00:30",
        ];
        let yearly2 = Policy {
            keep_yearly: Some(2),
            ..none()
        };
        run(&[
            Case {
                name: "yearly 2, UTC",
                policy: yearly2.clone(),
                tz: UTC,
                backups: B,
                clocks: &[
                    (
                        "2026-02-01 00:00",
                        &["2025-12-31 23:30", "2026-01-01 00:30"],
                    ),
                    (
                        "2025-12-31 23:40",
                        &["2024-06-01 12:00", "2025-12-31 23:30", "2026-01-01 00:30"],
                    ),
                ],
            },
            Case {
                name: "yearly 2, Berlin",
                policy: yearly2,
                tz: BERLIN,
                backups: B,
                clocks: &[
                    (
                        "2026-02-01 00:00",
                        &["2025-03-01 12:00", "2026-01-01 00:30"],
                    ),
                    (
                        "2025-12-31 23:40",
                        &["2025-03-01 12:00", "2025-12-31 23:30", "2026-01-01 00:30"],
                    ),
                ],
            },
        ]);
    }

    #[test]
    fn keep_weekly_uses_iso_weeks_across_new_year() {
        // 2026-W01 runs from Mon 2025-12-29 to Sun 2026-01-04: one bucket across New Year.
        run(&[Case {
            name: "weekly 3",
            policy: Policy {
                keep_weekly: Some(3),
                ..none()
            },
            tz: UTC,
            backups: &[
                "2025-12-27 12:00",
                "2025-12-28 12:00",
                "2025-12-29 12:00",
                "2026-01-03 12:00",
                "2026-01-04 12:00",
                "2026-01-05 12:00",
            ],
            clocks: &[
                (
                    "2026-01-06 00:00",
                    &["2025-12-28 12:00", "2026-01-04 12:00", "2026-01-05 12:00"],
                ),
                (
                    "2026-01-03 00:00",
                    &[
                        "2025-12-28 12:00",
                        "2025-12-29 12:00",
                        "2026-01-03 12:00",
                        "2026-01-04 12:00",
                        "2026-01-05 12:00",
                    ],
                ),
            ],
        }]);
    }

    #[test]
    fn keep_within_counts_from_the_newest_backup_not_from_now() {
        run(&[Case {
            name: "within 2d",
            policy: Policy {
                keep_within: Some(Duration::days(2)),
                ..none()
            },
            tz: UTC,
            backups: &[
                "2026-05-01 12:00",
                "2026-05-02 12:00",
                "2026-05-03 12:00",
                "2026-05-04 12:00",
                "2026-05-05 12:00",
                "2026-05-06 12:00",
                "2026-05-07 12:00",
                "2026-05-08 12:00",
                "2026-05-09 12:00",
                "2026-05-10 12:00",
            ],
            clocks: &[
                (
                    "2026-05-10 13:00",
                    &["2026-05-08 12:00", "2026-05-09 12:00", "2026-05-10 12:00"],
                ),
                // Backups stopped seven weeks ago: the last window is still kept.
                (
                    "2026-06-30 00:00",
                    &["2026-05-08 12:00", "2026-05-09 12:00", "2026-05-10 12:00"],
                ),
                // May 7..10 are in the future: the window hangs from May 6, the newest real backup.
                (
                    "2026-05-06 13:00",
                    &[
                        "2026-05-04 12:00",
                        "2026-05-05 12:00",
                        "2026-05-06 12:00",
                        "2026-05-07 12:00",
                        "2026-05-08 12:00",
                        "2026-05-09 12:00",
                        "2026-05-10 12:00",
                    ],
                ),
            ],
        }]);
    }

    #[test]
    fn dst_fall_back_in_berlin_2026_10_25() {
        // 03:00 CEST → 02:00 CET: local 02:00–02:59 happens twice. Those are two real hours, so two buckets.
        run(&[
            Case {
                name: "hourly 3 across fall-back",
                policy: Policy {
                    keep_hourly: Some(3),
                    ..none()
                },
                tz: BERLIN,
                backups: &[
                    "2026-10-24 23:30", // 01:30 CEST
                    "2026-10-25 00:10", // 02:10 CEST
                    "2026-10-25 00:40", // 02:40 CEST
                    "2026-10-25 01:10", // 02:10 CET
                    "2026-10-25 01:40", // 02:40 CET
                ],
                clocks: &[
                    (
                        "2026-10-25 03:00",
                        &["2026-10-24 23:30", "2026-10-25 00:40", "2026-10-25 01:40"],
                    ),
                    (
                        "2026-10-25 01:00",
                        &[
                            "2026-10-24 23:30",
                            "2026-10-25 00:40",
                            "2026-10-25 01:10",
                            "2026-10-25 01:40",
                        ],
                    ),
                ],
            },
            // The 25-hour local day Oct 25 is one bucket.
            Case {
                name: "daily 2 across fall-back, Berlin",
                policy: Policy {
                    keep_daily: Some(2),
                    ..none()
                },
                tz: BERLIN,
                backups: DST_FALL_DAYS,
                clocks: &[
                    (
                        "2026-10-26 06:00",
                        &["2026-10-25 22:30", "2026-10-25 23:30"],
                    ),
                    (
                        "2026-10-25 12:00",
                        &[
                            "2026-10-24 21:30",
                            "2026-10-25 12:00",
                            "2026-10-25 22:30",
                            "2026-10-25 23:30",
                        ],
                    ),
                ],
            },
            Case {
                name: "daily 2 across fall-back, UTC",
                policy: Policy {
                    keep_daily: Some(2),
                    ..none()
                },
                tz: UTC,
                backups: DST_FALL_DAYS,
                clocks: &[
                    (
                        "2026-10-26 06:00",
                        &["2026-10-24 22:30", "2026-10-25 23:30"],
                    ),
                    (
                        "2026-10-25 12:00",
                        &[
                            "2026-10-24 22:30",
                            "2026-10-25 12:00",
                            "2026-10-25 22:30",
                            "2026-10-25 23:30",
                        ],
                    ),
                ],
            },
        ]);
    }

    const DST_FALL_DAYS: &[&str] = &[
        "2026-10-24 21:30", // Oct 24 23:30 CEST
        "2026-10-24 22:30", // Oct 25 00:30 CEST
        "2026-10-25 12:00", // Oct 25 13:00 CET
        "2026-10-25 22:30", // Oct 25 23:30 CET
        "2026-10-25 23:30", // Oct 26 00:30 CET
    ];

    #[test]
    fn dst_spring_forward_in_berlin_2026_03_29() {
        // 02:00 CET → 03:00 CEST: local hour 02 does not exist; the local day is 23 hours long.
        run(&[
            Case {
                name: "hourly 3 across spring-forward",
                policy: Policy {
                    keep_hourly: Some(3),
                    ..none()
                },
                tz: BERLIN,
                backups: &[
                    "2026-03-28 23:10", // 00:10 CET
                    "2026-03-28 23:50", // 00:50 CET
                    "2026-03-29 00:30", // 01:30 CET
                    "2026-03-29 01:00", // 03:00 CEST
                    "2026-03-29 01:30", // 03:30 CEST
                    "2026-03-29 02:10", // 04:10 CEST
                ],
                clocks: &[
                    (
                        "2026-03-29 03:00",
                        &["2026-03-29 00:30", "2026-03-29 01:30", "2026-03-29 02:10"],
                    ),
                    (
                        "2026-03-29 01:00",
                        &[
                            "2026-03-28 23:50",
                            "2026-03-29 00:30",
                            "2026-03-29 01:00",
                            "2026-03-29 01:30",
                            "2026-03-29 02:10",
                        ],
                    ),
                ],
            },
            Case {
                name: "daily 2 across spring-forward",
                policy: Policy {
                    keep_daily: Some(2),
                    ..none()
                },
                tz: BERLIN,
                backups: &[
                    "2026-03-28 12:00", // Mar 28 13:00 CET
                    "2026-03-28 22:30", // Mar 28 23:30 CET
                    "2026-03-28 23:30", // Mar 29 00:30 CET
                    "2026-03-29 21:30", // Mar 29 23:30 CEST
                    "2026-03-29 22:30", // Mar 30 00:30 CEST
                ],
                clocks: &[
                    (
                        "2026-03-30 06:00",
                        &["2026-03-29 21:30", "2026-03-29 22:30"],
                    ),
                    (
                        "2026-03-29 12:00",
                        &[
                            "2026-03-28 22:30",
                            "2026-03-28 23:30",
                            "2026-03-29 21:30",
                            "2026-03-29 22:30",
                        ],
                    ),
                ],
            },
        ]);
    }

    #[test]
    fn each_rule_counts_on_its_own_and_says_so() {
        // Mon 2026-05-04 .. Sun 2026-05-10, one backup a day, plus Sunday of the week before.
        let backups = cands(&[
            "2026-05-03 12:00",
            "2026-05-04 12:00",
            "2026-05-05 12:00",
            "2026-05-06 12:00",
            "2026-05-07 12:00",
            "2026-05-08 12:00",
            "2026-05-09 12:00",
            "2026-05-10 12:00",
        ]);
        let policy = Policy {
            keep_last: Some(1),
            keep_daily: Some(2),
            keep_weekly: Some(2),
            ..none()
        };
        let p = plan(&with(policy), &backups, t("2026-05-11 00:00"), &UTC);
        let got: Vec<(String, Action, Vec<String>)> = p
            .decisions
            .iter()
            .map(|d| (d.time.format(FMT).to_string(), d.action, d.reasons.clone()))
            .collect();
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        use Action::*;
        let want = vec![
            (
                "2026-05-10 12:00".to_string(),
                Keep,
                r(&["last 1/1", "daily 1/2", "weekly 1/2", "newest"]),
            ),
            ("2026-05-09 12:00".into(), Keep, r(&["daily 2/2"])),
            ("2026-05-08 12:00".into(), Delete, vec![]),
            ("2026-05-07 12:00".into(), Delete, vec![]),
            ("2026-05-06 12:00".into(), Delete, vec![]),
            ("2026-05-05 12:00".into(), Delete, vec![]),
            ("2026-05-04 12:00".into(), Delete, vec![]),
            ("2026-05-03 12:00".into(), Keep, r(&["weekly 2/2"])),
        ];
        assert_eq!(got, want);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn an_empty_policy_keeps_everything() {
        let backups = cands(SIX_DAYS);
        let p = plan(&with(none()), &backups, t("2026-06-01 00:00"), &UTC);
        assert_eq!(p.decisions.len(), 6);
        for d in &p.decisions {
            assert_eq!(d.action, Action::Keep);
            assert!(d.reasons.contains(&"no policy".to_string()), "{d:?}");
        }
        assert!(p.notes.iter().any(|n| n.contains("no retention policy")));
    }

    #[test]
    fn a_policy_that_would_delete_everything_deletes_nothing() {
        let backups = cands(SIX_DAYS);
        for policy in [
            Policy {
                keep_daily: Some(0),
                ..none()
            },
            Policy {
                keep_last: Some(0),
                keep_weekly: Some(0),
                ..none()
            },
        ] {
            for now in ["2026-05-07 00:00", "2027-01-01 00:00"] {
                let p = plan(&with(policy.clone()), &backups, t(now), &UTC);
                assert_eq!(p.deletions().count(), 0, "{policy:?} at {now}: {p:#?}");
                assert!(
                    p.notes
                        .iter()
                        .any(|n| n.contains("would delete every backup")),
                    "{:?}",
                    p.notes
                );
            }
        }
    }

    #[test]
    fn pre_restore_backups_have_their_own_rule() {
        // Regular: one a day May 1..6. Pre-restore: May 2, 3, 4, 5 (and one on Apr 1).
        let mut backups = cands(SIX_DAYS);
        for (n, s) in [
            "2026-04-01 09:00",
            "2026-05-02 09:00",
            "2026-05-03 09:00",
            "2026-05-04 09:00",
            "2026-05-05 09:00",
        ]
        .iter()
        .enumerate()
        {
            backups.push(cand_at(t(s), 100 + n, true, 100));
        }
        let policy = Policy {
            keep_last: Some(2),
            ..none()
        };
        let settings = Retention {
            policy,
            pre_restore_keep_last: 2,
            pre_restore_keep_within: std::time::Duration::from_secs(7 * 86400),
            ..Retention::default()
        };
        // Now = May 10: within 7d of now reaches back to May 3 09:00.
        let p = plan(&settings, &backups, t("2026-05-10 09:00"), &UTC);
        let kept = kept_times(&p);
        assert_eq!(
            kept,
            vec![
                "2026-05-03 09:00", // pre-restore within 7d
                "2026-05-04 09:00", // pre-restore last 2/2 + within
                "2026-05-05 09:00", // pre-restore last 1/2 + within
                "2026-05-05 12:00", // last 2/2: the newer pre-restore backups took no slot
                "2026-05-06 12:00", // last 1/2
            ]
        );
        // Same backups, later clock: only the last-2 rule is left for the safety copies.
        let p = plan(&settings, &backups, t("2026-06-30 00:00"), &UTC);
        assert_eq!(
            kept_times(&p),
            vec![
                "2026-05-04 09:00",
                "2026-05-05 09:00",
                "2026-05-05 12:00",
                "2026-05-06 12:00"
            ]
        );
        let d = p
            .decisions
            .iter()
            .find(|d| d.time == t("2026-05-05 09:00"))
            .unwrap();
        assert_eq!(d.reasons, vec!["pre-restore last 1/2"]);
    }

    #[test]
    fn future_dated_backups_are_kept_reported_and_not_counted() {
        let mut backups = cands(SIX_DAYS);
        backups.push(cand_at(t("2031-01-01 00:00"), 99, false, 100));
        let policy = Policy {
            keep_last: Some(1),
            keep_within: Some(Duration::days(1)),
            ..none()
        };
        let p = plan(&with(policy), &backups, t("2026-05-06 13:00"), &UTC);
        assert_eq!(
            kept_times(&p),
            vec!["2026-05-05 12:00", "2026-05-06 12:00", "2031-01-01 00:00"]
        );
        let future = &p.decisions[0];
        assert_eq!(future.time, t("2031-01-01 00:00"));
        assert_eq!(
            future.reasons,
            vec!["future-dated (clock skew): never deleted"]
        );
        assert_eq!(
            p.decisions[1].reasons,
            vec!["last 1/1", "within 1d", "newest"]
        );
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains(future.id.as_str()) && n.contains("clock")),
            "{:?}",
            p.notes
        );
        // Within the tolerance it is a normal backup.
        let mut backups = cands(SIX_DAYS);
        backups.push(cand_at(t("2026-05-06 13:04"), 99, false, 100));
        let p = plan(
            &with(Policy {
                keep_last: Some(1),
                ..none()
            }),
            &backups,
            t("2026-05-06 13:00"),
            &UTC,
        );
        assert_eq!(kept_times(&p), vec!["2026-05-06 13:04"]);
    }

    #[test]
    fn shrink_check_cases() {
        let c = |bytes: u64| cand_at(t("2026-05-01 00:00"), 1, false, bytes);
        let prev = |bytes: u64| {
            BTreeMap::from([("vol".to_string(), (id_at(t("2026-04-30 00:00"), 0), bytes))])
        };
        // (previous, new, max_shrink, allowed)
        let table: &[(Option<u64>, u64, f64, bool)] = &[
            (None, 100, 0.5, true),
            (None, 0, 0.5, false),
            (Some(100), 0, 1.0, false),
            (Some(100), 60, 0.5, true),
            (Some(100), 50, 0.5, true),
            (Some(100), 40, 0.5, false),
            (Some(100), 10, 0.9, true),
            (Some(100), 9, 0.9, false),
            (Some(100), 1, 1.0, true),
            (Some(100), 200, 0.0, true),
            (Some(100), 99, 0.0, false),
            (Some(0), 5, 0.5, true),
        ];
        for &(p, new, max, allowed) in table {
            let previous = p.map(prev).unwrap_or_default();
            let r = shrink_check(&c(new), &previous, max);
            assert_eq!(r.is_ok(), allowed, "{p:?} → {new} at {max}: {r:?}");
            if let Err(msg) = r {
                assert!(msg.contains("pruning skipped"), "{msg}");
            }
        }
    }

    /// Issue 8: each source is compared with its own previous backup. A source that lost 90% is caught even when
    /// another source grew enough to hide it in the total; a source without a previous backup is not compared.
    #[test]
    fn issue8_shrink_is_judged_per_source() {
        let at = t("2026-05-01 00:00");
        let before = id_at(t("2026-04-30 00:00"), 0);
        let new = cand_of(at, 1, false, &[("a", 10_000), ("b", 10), ("c", 1)]);
        let previous = BTreeMap::from([
            ("a".to_string(), (before.clone(), 100)),
            ("b".to_string(), (before.clone(), 100)),
        ]);
        let e = shrink_check(&new, &previous, 0.5).unwrap_err();
        assert!(e.contains("source b") && e.contains("90% less"), "{e}");
        assert!(e.contains(before.as_str()), "{e}");
        let grown = cand_of(at, 1, false, &[("a", 100), ("b", 60), ("c", 1)]);
        shrink_check(&grown, &previous, 0.5).unwrap();
    }

    /// Issue 8 (critical): a full backup of A and B, then two `--only A` runs under `keep-last 1`. Judging whole
    /// backups deleted the full one and left B with no backup at all. Per source, the full backup is B's newest
    /// and stays; the older partial one goes; the reasons name the source.
    #[test]
    fn issue8_partial_backups_never_remove_the_newest_backup_of_another_source() {
        let full = cand_of(t("2026-05-01 03:00"), 0, false, &[("a", 100), ("b", 100)]);
        let only_a1 = cand_of(t("2026-05-01 04:00"), 1, false, &[("a", 100)]);
        let only_a2 = cand_of(t("2026-05-01 05:00"), 2, false, &[("a", 100)]);
        let backups = vec![full.clone(), only_a1.clone(), only_a2.clone()];
        for now in [t("2026-05-01 06:00"), t("2027-01-01 00:00")] {
            let p = plan(
                &with(Policy {
                    keep_last: Some(1),
                    ..none()
                }),
                &backups,
                now,
                &UTC,
            );
            let d = |id: &BackupId| p.decisions.iter().find(|d| &d.id == id).unwrap();
            assert_eq!(d(&only_a2.id).action, Action::Keep, "{:#?}", p.decisions);
            assert!(d(&only_a2.id).reasons.contains(&"a: last 1/1".to_string()));
            assert_eq!(d(&full.id).action, Action::Keep, "{:#?}", p.decisions);
            assert!(
                d(&full.id).reasons.contains(&"b: last 1/1".to_string())
                    && d(&full.id).reasons.contains(&"b: newest".to_string()),
                "{:#?}",
                p.decisions
            );
            assert_eq!(d(&only_a1.id).action, Action::Delete, "{:#?}", p.decisions);
            assert_eq!(d(&full.id).sources, vec!["a", "b"]);
        }
        // A source that failed in the full run (so is not in it) is judged by what does hold it.
        let p = plan(
            &with(Policy {
                keep_daily: Some(1),
                ..none()
            }),
            &[full.clone(), only_a1.clone()],
            t("2026-05-02 00:00"),
            &UTC,
        );
        assert!(p.decisions.iter().all(|d| d.action == Action::Keep));
    }

    /// An incomplete backup (entries that existed could not be archived) is the newest of its source, but the
    /// newest complete one stays too, whatever the policy: pruning never removes the newest good backup.
    #[test]
    fn the_newest_complete_backup_of_a_source_survives_incomplete_ones() {
        let good = cand_at(t("2026-05-01 03:00"), 0, false, 100);
        let mut bad1 = cand_at(t("2026-05-02 03:00"), 1, false, 90);
        bad1.incomplete.insert("vol".into());
        let mut bad2 = cand_at(t("2026-05-03 03:00"), 2, false, 90);
        bad2.incomplete.insert("vol".into());
        let p = plan(
            &with(Policy {
                keep_last: Some(1),
                ..none()
            }),
            &[good.clone(), bad1.clone(), bad2.clone()],
            t("2026-05-04 00:00"),
            &UTC,
        );
        let d = |id: &BackupId| p.decisions.iter().find(|d| &d.id == id).unwrap();
        assert_eq!(
            d(&good.id).reasons,
            vec!["newest complete"],
            "{:#?}",
            p.decisions
        );
        assert_eq!(d(&bad1.id).action, Action::Delete, "{:#?}", p.decisions);
        assert_eq!(d(&bad2.id).action, Action::Keep);
    }

    #[test]
    fn durations_are_compact() {
        for (secs, s) in [
            (0, "0s"),
            (90, "1m30s"),
            (14 * 86400, "14d"),
            (36 * 3600, "1d12h"),
            (3600, "1h"),
        ] {
            assert_eq!(format_duration(Duration::seconds(secs)), s);
        }
    }

    #[test]
    fn decisions_serialize_for_json_output() {
        let p = plan(
            &with(Policy {
                keep_last: Some(1),
                ..none()
            }),
            &cands(&["2026-05-01 12:00", "2026-05-02 12:00"]),
            t("2026-05-03 00:00"),
            &UTC,
        );
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["decisions"][0]["action"], "keep");
        assert_eq!(v["decisions"][1]["action"], "delete");
        assert_eq!(v["decisions"][0]["pre-restore"], false);
        assert_eq!(v["decisions"][0]["reasons"][0], "last 1/1");
    }

    // -----------------------------------------------------------------------------------------------------------
    // Property tests against an oracle that states each rule declaratively ("the newest backup of each of the N
    // newest buckets") instead of walking like `plan` does.

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn base() -> DateTime<Utc> {
            t("2026-01-01 00:00")
        }
        const TWO_YEARS: i64 = 2 * 366 * 86400;

        fn arb_backups() -> impl Strategy<Value = Vec<Candidate>> {
            // Gaps of minutes to months so that buckets hold several backups at every granularity.
            let gap = prop_oneof![
                Just(0i64),
                0i64..3600,
                0i64..86400,
                0i64..7 * 86400,
                0i64..90 * 86400
            ];
            // Each backup holds a non-empty subset of three sources (full and partial runs mixed); most hold
            // all of them.
            let subset = prop_oneof![3 => Just(0b111u8), 2 => 1u8..8];
            prop::collection::vec((gap, prop::bool::weighted(0.2), 0u64..1000, subset), 0..60)
                .prop_map(|items| {
                    let mut time = base() - Duration::seconds(TWO_YEARS);
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(n, (gap, pre, bytes, set))| {
                            time += Duration::seconds(gap);
                            let sources: Vec<(&str, u64)> = ["a", "b", "c"]
                                .into_iter()
                                .enumerate()
                                .filter(|(k, _)| set & (1 << k) != 0)
                                .map(|(_, s)| (s, bytes))
                                .collect();
                            cand_of(time, n, pre, &sources)
                        })
                        .collect()
                })
        }

        fn arb_count() -> impl Strategy<Value = Option<u32>> {
            prop::option::weighted(0.4, 0u32..6)
        }

        fn arb_settings() -> impl Strategy<Value = Retention> {
            (
                (arb_count(), arb_count(), arb_count()),
                (arb_count(), arb_count(), arb_count()),
                prop::option::weighted(0.3, 0i64..400 * 24),
                0u32..4,
                0u64..14 * 24,
            )
                .prop_map(|((l, h, d), (w, m, y), within, pre_last, pre_within)| {
                    Retention {
                        policy: Policy {
                            keep_last: l,
                            keep_hourly: h,
                            keep_daily: d,
                            keep_weekly: w,
                            keep_monthly: m,
                            keep_yearly: y,
                            keep_within: within.map(Duration::hours),
                        },
                        pre_restore_keep_last: pre_last,
                        pre_restore_keep_within: std::time::Duration::from_secs(pre_within * 3600),
                        ..Retention::default()
                    }
                })
        }

        fn arb_now() -> impl Strategy<Value = DateTime<Utc>> {
            (-TWO_YEARS..TWO_YEARS).prop_map(|s| base() + Duration::seconds(s))
        }

        fn arb_tz() -> impl Strategy<Value = Tz> {
            prop::sample::select(vec![
                chrono_tz::UTC,
                BERLIN,
                chrono_tz::America::New_York,
                chrono_tz::Australia::Lord_Howe, // 30-minute DST shift
                chrono_tz::Asia::Kolkata,        // +05:30
                chrono_tz::Pacific::Chatham,     // +12:45 / +13:45
            ])
        }

        /// Independent bucket keys: the real instant a local hour began; calendar fields of the local date.
        fn oracle_bucket(rule: &str, time: DateTime<Utc>, tz: &Tz) -> (i64, i64) {
            let local = time.with_timezone(tz);
            let date = local.date_naive();
            match rule {
                "hourly" => {
                    let into_hour = i64::from(local.minute()) * 60 + i64::from(local.second());
                    (time.timestamp() - into_hour, 0)
                }
                "daily" => (date.num_days_from_ce().into(), 0),
                "weekly" => (date.iso_week().year().into(), date.iso_week().week().into()),
                "monthly" => (date.year().into(), date.month().into()),
                "yearly" => (date.year().into(), 0),
                _ => unreachable!(),
            }
        }

        /// For every candidate, the labels of what keeps it (empty = delete): the rules of each source over the
        /// backups that hold it, united.
        fn oracle(
            s: &Retention,
            cands: &[Candidate],
            now: DateTime<Utc>,
            tz: &Tz,
        ) -> BTreeMap<BackupId, BTreeSet<&'static str>> {
            let mut out: BTreeMap<BackupId, BTreeSet<&'static str>> = cands
                .iter()
                .map(|c| (c.id.clone(), BTreeSet::new()))
                .collect();
            let mut order: Vec<&Candidate> = cands.iter().collect();
            order.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
            let is_future = |c: &Candidate| c.time > now + Duration::minutes(5);
            let names: BTreeSet<&String> = cands.iter().flat_map(|c| c.sources.keys()).collect();
            for name in names {
                let series: Vec<&Candidate> = order
                    .iter()
                    .copied()
                    .filter(|c| !is_future(c) && c.sources.contains_key(name))
                    .collect();
                series_oracle(s, &series, now, tz, &mut out);
            }
            if let Some(c) = order.iter().find(|c| !is_future(c)) {
                out.get_mut(&c.id).unwrap().insert("newest");
            }
            for c in order.iter().filter(|c| is_future(c)) {
                out.get_mut(&c.id).unwrap().insert("future");
            }
            out
        }

        /// One source's series (non-future, newest first).
        fn series_oracle(
            s: &Retention,
            order: &[&Candidate],
            now: DateTime<Utc>,
            tz: &Tz,
            all: &mut BTreeMap<BackupId, BTreeSet<&'static str>>,
        ) {
            let mut out: BTreeMap<BackupId, BTreeSet<&'static str>> = order
                .iter()
                .map(|c| (c.id.clone(), BTreeSet::new()))
                .collect();
            let regular: Vec<&Candidate> =
                order.iter().copied().filter(|c| !c.pre_restore).collect();
            let pre: Vec<&Candidate> = order.iter().copied().filter(|c| c.pre_restore).collect();
            let mut add = |id: &BackupId, l: &'static str| {
                out.get_mut(id).unwrap().insert(l);
            };
            let p = &s.policy;
            if p.is_empty() {
                for c in regular.iter().chain(&pre) {
                    add(&c.id, "no policy");
                }
            } else {
                for c in regular.iter().take(p.keep_last.unwrap_or(0) as usize) {
                    add(&c.id, "last");
                }
                for (rule, n) in [
                    ("hourly", p.keep_hourly),
                    ("daily", p.keep_daily),
                    ("weekly", p.keep_weekly),
                    ("monthly", p.keep_monthly),
                    ("yearly", p.keep_yearly),
                ] {
                    let Some(n) = n else { continue };
                    // bucket → its newest backup; buckets ordered by that backup, newest first.
                    let mut newest_in: BTreeMap<(i64, i64), &Candidate> = BTreeMap::new();
                    for c in &regular {
                        newest_in
                            .entry(oracle_bucket(rule, c.time, tz))
                            .or_insert(c);
                    }
                    let mut heads: Vec<&Candidate> = newest_in.into_values().collect();
                    heads.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
                    for c in heads.into_iter().take(n as usize) {
                        add(&c.id, rule);
                    }
                }
                if let (Some(d), Some(newest)) = (p.keep_within, regular.first()) {
                    for c in &regular {
                        if c.time >= newest.time - d {
                            add(&c.id, "within");
                        }
                    }
                }
                for c in pre.iter().take(s.pre_restore_keep_last as usize) {
                    add(&c.id, "pre-restore last");
                }
                let w = Duration::from_std(s.pre_restore_keep_within).unwrap();
                for c in &pre {
                    if c.time >= now - w {
                        add(&c.id, "pre-restore within");
                    }
                }
            }
            let kept_any = |v: &[&Candidate], out: &BTreeMap<BackupId, BTreeSet<&str>>| {
                v.iter().any(|c| !out[&c.id].is_empty())
            };
            let guard = !p.is_empty()
                && if regular.is_empty() {
                    !pre.is_empty() && !kept_any(&pre, &out)
                } else {
                    !kept_any(&regular, &out)
                };
            let mut add = |id: &BackupId, l: &'static str| {
                out.get_mut(id).unwrap().insert(l);
            };
            if guard {
                for c in regular.iter().chain(&pre) {
                    add(&c.id, "guard");
                }
            }
            if let Some(c) = regular.first() {
                add(&c.id, "newest");
            }
            for (id, labels) in out {
                all.get_mut(&id).unwrap().extend(labels);
            }
        }

        fn label(reason: &str) -> &'static str {
            for (prefix, l) in [
                ("pre-restore last ", "pre-restore last"),
                ("pre-restore within ", "pre-restore within"),
                ("last ", "last"),
                ("hourly ", "hourly"),
                ("daily ", "daily"),
                ("weekly ", "weekly"),
                ("monthly ", "monthly"),
                ("yearly ", "yearly"),
                ("within ", "within"),
                ("future-dated", "future"),
                ("policy would delete every backup", "guard"),
                ("no policy", "no policy"),
                ("newest", "newest"),
            ] {
                if reason.starts_with(prefix) {
                    return l;
                }
            }
            // `a: last 1/3`, `a, c: newest`: a reason of one series.
            if let Some((sources, rest)) = reason.split_once(": ") {
                if sources.split(", ").all(|s| ["a", "b", "c"].contains(&s)) {
                    return label(rest);
                }
            }
            panic!("unknown reason `{reason}`")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn plan_matches_the_declarative_rules(
                backups in arb_backups(), s in arb_settings(), now in arb_now(), tz in arb_tz()
            ) {
                let p = plan(&s, &backups, now, &tz);
                prop_assert_eq!(p.decisions.len(), backups.len());
                let got: BTreeMap<BackupId, BTreeSet<&'static str>> = p
                    .decisions
                    .iter()
                    .map(|d| (d.id.clone(), d.reasons.iter().map(|r| label(r)).collect()))
                    .collect();
                prop_assert_eq!(got, oracle(&s, &backups, now, &tz));
            }

            #[test]
            fn safety_properties_hold(
                backups in arb_backups(), s in arb_settings(), now in arb_now(), tz in arb_tz()
            ) {
                let p = plan(&s, &backups, now, &tz);
                let future = |time: DateTime<Utc>| time > now + FUTURE_TOLERANCE;
                // Decisions are newest first, one per backup.
                for w in p.decisions.windows(2) {
                    prop_assert!(w[0].time >= w[1].time);
                }
                let ids: BTreeSet<_> = p.decisions.iter().map(|d| &d.id).collect();
                prop_assert_eq!(ids.len(), backups.len());
                for d in &p.decisions {
                    // Kept exactly when something kept it; every reason is a keep reason.
                    prop_assert_eq!(d.action == Action::Keep, !d.reasons.is_empty());
                    if future(d.time) {
                        prop_assert_eq!(d.action, Action::Keep, "future-dated {:?}", d);
                    }
                    if s.policy.is_empty() {
                        prop_assert_eq!(d.action, Action::Keep);
                    }
                }
                // The newest complete, non-future regular backup survives; so does the newest of all.
                let newest_regular = p.decisions.iter().find(|d| !future(d.time) && !d.pre_restore);
                if let Some(d) = newest_regular {
                    prop_assert_eq!(d.action, Action::Keep, "newest regular {:?}", d);
                }
                if let Some(d) = p.decisions.iter().find(|d| !future(d.time)) {
                    prop_assert_eq!(d.action, Action::Keep, "newest {:?}", d);
                }
                // Issue 8 / row 22: the newest non-future regular backup of every source survives, whatever the
                // other backups hold.
                for name in ["a", "b", "c"] {
                    let newest = p.decisions.iter().find(|d| {
                        !future(d.time) && !d.pre_restore && d.sources.iter().any(|s| s == name)
                    });
                    if let Some(d) = newest {
                        prop_assert_eq!(d.action, Action::Keep, "newest of {} {:?}", name, d);
                    }
                }
                // Something non-future is always kept when there is anything non-future.
                if p.decisions.iter().any(|d| !future(d.time)) {
                    prop_assert!(p.decisions.iter().any(|d| !future(d.time) && d.action == Action::Keep));
                }
            }

            #[test]
            fn plan_does_not_depend_on_listing_order(
                (backups, shuffled) in arb_backups().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
                s in arb_settings(), now in arb_now(), tz in arb_tz()
            ) {
                let mut reversed = backups.clone();
                reversed.reverse();
                let a = plan(&s, &backups, now, &tz);
                prop_assert_eq!(&a, &plan(&s, &shuffled, now, &tz));
                prop_assert_eq!(&a, &plan(&s, &reversed, now, &tz));
            }
        }
    }
}
