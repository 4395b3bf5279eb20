//! Retention settings, in the two spellings a two-stage config needs and no more: [`RawRetention`], the keys of a
//! `[retention]` table exactly as written (every key optional, so a job's or a target's table can set just the
//! keys it changes), and [`Retention`], the validated settings with every default filled in, which `retention`
//! plans with and `prune` reads. [`merge_retention`] turns the one into the other, key by key, over a base.
//!
//! Why not one struct for both: a key that is only optional in the file cannot tell "not set"
//! from "set to the default", and parsing durations and zones inside serde would change the error messages
//! (`retention.keep-within: …` would become a bare line and column).

use std::time::Duration;

use serde::Deserialize;

use super::{parse_duration, ConfigError};

/// A grandfather-father-son policy with restic/borg semantics. `None` = rule not set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<chrono::Duration>,
}

impl Policy {
    /// An empty policy keeps everything.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// Retention settings: the policy plus the knobs around it.
#[derive(Clone, Debug)]
pub struct Retention {
    pub policy: Policy,
    pub timezone: Option<chrono_tz::Tz>,
    pub pre_restore_keep_last: u32,
    pub pre_restore_keep_within: Duration,
    /// Incomplete backups (no manifest) older than this are removed by prune.
    pub incomplete_grace: Duration,
    /// Skip pruning when the new backup's size dropped by more than this fraction versus the previous one.
    pub max_shrink: f64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            policy: Policy::default(),
            timezone: None,
            pre_restore_keep_last: 3,
            pre_restore_keep_within: Duration::from_secs(7 * 86400),
            incomplete_grace: Duration::from_secs(86400),
            max_shrink: 0.5,
        }
    }
}

/// A `[retention]` table as written (top level, `[job.NAME.retention]` or `[target.NAME.retention]`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRetention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<String>,
    pub timezone: Option<String>,
    pub pre_restore_keep_last: Option<u32>,
    pub pre_restore_keep_within: Option<String>,
    pub incomplete_grace: Option<String>,
    pub max_shrink: Option<f64>,
}

/// `raw`'s keys on top of `r`, each checked; the messages name the key (`retention.keep-within: …`).
pub(super) fn merge_retention(
    mut r: Retention,
    raw: Option<&RawRetention>,
) -> Result<Retention, ConfigError> {
    let Some(x) = raw else { return Ok(r) };
    let p = &mut r.policy;
    macro_rules! set {
        ($f:ident) => {
            if let Some(v) = x.$f {
                p.$f = Some(v);
            }
        };
    }
    set!(keep_last);
    set!(keep_hourly);
    set!(keep_daily);
    set!(keep_weekly);
    set!(keep_monthly);
    set!(keep_yearly);
    if let Some(w) = &x.keep_within {
        p.keep_within = Some(
            chrono::Duration::from_std(
                parse_duration(w)
                    .map_err(|m| ConfigError::Invalid(format!("retention.keep-within: {m}")))?,
            )
            .map_err(|e| ConfigError::Invalid(format!("retention.keep-within: {e}")))?,
        );
    }
    if let Some(tz) = &x.timezone {
        r.timezone = Some(tz.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "retention.timezone = `{tz}`: not an IANA time zone (e.g. Europe/Berlin, UTC)"
            ))
        })?);
    }
    if let Some(v) = x.pre_restore_keep_last {
        r.pre_restore_keep_last = v;
    }
    if let Some(w) = &x.pre_restore_keep_within {
        r.pre_restore_keep_within = parse_duration(w)
            .map_err(|m| ConfigError::Invalid(format!("retention.pre-restore-keep-within: {m}")))?;
    }
    if let Some(w) = &x.incomplete_grace {
        r.incomplete_grace = parse_duration(w)
            .map_err(|m| ConfigError::Invalid(format!("retention.incomplete-grace: {m}")))?;
    }
    if let Some(f) = x.max_shrink {
        if !(0.0..=1.0).contains(&f) {
            return Err(ConfigError::Invalid(
                "retention.max-shrink must be a fraction between 0 and 1".into(),
            ));
        }
        r.max_shrink = f;
    }
    Ok(r)
}
