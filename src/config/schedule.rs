//! The daemon's settings: `[daemon] listen`, and per job `schedule`, `timezone`, `jitter`, `max-age`. Validated
//! at load so that a bad cron expression or zone is a config error naming the job and the key, with an example,
//! and never a surprise at 3 a.m.
//!
//! The cron expression is parsed here once, by [`cron`], with the options voltar accepts (5 fields, 6 with seconds
//! first, `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly`); `schedule::Schedule` computes run times from it.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use chrono_tz::Tz;

use super::{parse_duration, ConfigError};

/// Default of `[daemon] listen`: loopback only (a container publishes it explicitly).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9799";

/// `[daemon]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemon {
    /// Where `/healthz` and `/metrics` are served; `None`: `listen = ""`, no listener.
    pub listen: Option<SocketAddr>,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            listen: Some(DEFAULT_LISTEN.parse().expect("valid default")),
        }
    }
}

/// A job's schedule, as configured and checked.
#[derive(Clone, Debug)]
pub struct JobSchedule {
    /// The cron expression as written (`15 3 * * *`, `*/2 * * * * *`, `@daily`).
    pub expr: String,
    pub timezone: Tz,
    /// Where [`JobSchedule::timezone`] came from.
    pub zone_from: ZoneFrom,
    /// Each run starts at its slot plus a random delay up to this (0: none).
    pub jitter: Duration,
    /// `/healthz` turns unhealthy when the last success is older; `None`: two schedule intervals.
    pub max_age: Option<Duration>,
}

/// Where a job's time zone came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneFrom {
    /// `timezone = "…"` in the job.
    Config,
    /// The machine's zone (`TZ`, else `/etc/localtime`).
    Machine,
    /// The machine's zone could not be found: UTC, and why (the daemon warns with it).
    FallbackUtc(String),
}

/// Parse a cron expression the way voltar accepts it: 5 fields (minute first), 6 with seconds first, or
/// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. The one place that sets the parser's options.
pub fn cron(expr: &str) -> Result<croner::Cron, String> {
    let parsed = croner::Cron::new(expr.trim())
        .with_seconds_optional()
        .parse()
        .map_err(|e| {
            // croner says "Component error: Number out of bounds.": our messages are lowercase, without the stop.
            let m = e.to_string();
            let m = m.trim().trim_end_matches('.');
            let mut c = m.chars();
            c.next()
                .map(|f| f.to_lowercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })?;
    // An expression that never matches (`0 0 31 2 *`) parses: say so now rather than never run.
    if parsed.find_next_occurrence(&Utc::now(), false).is_err() {
        return Err("it never matches a real date".into());
    }
    Ok(parsed)
}

const CRON_EXAMPLE: &str = "e.g. \"15 3 * * *\" (03:15 every day), \"0 */6 * * *\", \"@daily\", or 6 fields with seconds first (\"*/30 * * * * *\")";

/// The machine's time zone: `TZ` when it is an IANA name, else the system's (`/etc/localtime`), else UTC.
pub fn machine_zone() -> (Tz, ZoneFrom) {
    if let Ok(tz) = std::env::var("TZ") {
        let name = tz.trim_start_matches(':');
        if let Ok(z) = name.parse::<Tz>() {
            return (z, ZoneFrom::Machine);
        }
    }
    match iana_time_zone::get_timezone() {
        Ok(name) => match name.parse::<Tz>() {
            Ok(z) => (z, ZoneFrom::Machine),
            Err(_) => (
                Tz::UTC,
                ZoneFrom::FallbackUtc(format!(
                    "the machine's time zone `{name}` is not an IANA name"
                )),
            ),
        },
        Err(e) => (
            Tz::UTC,
            ZoneFrom::FallbackUtc(format!("cannot find the machine's time zone ({e})")),
        ),
    }
}

/// `[daemon]` as written.
pub(super) fn daemon(listen: Option<&str>) -> Result<Daemon, ConfigError> {
    match listen.map(str::trim) {
        None => Ok(Daemon::default()),
        Some("") => Ok(Daemon { listen: None }),
        Some(l) => l.parse().map(|a| Daemon { listen: Some(a) }).map_err(|_| {
            ConfigError::Invalid(format!(
                "daemon.listen = \"{l}\": not an address and port; e.g. \"127.0.0.1:9799\", \"0.0.0.0:9799\" (in a container), or \"\" for no listener"
            ))
        }),
    }
}

/// A job's `schedule`, `timezone`, `jitter` and `max-age`; `None` when it has no schedule (the other three are
/// then errors: they would do nothing).
pub(super) fn job_schedule(
    job: &str,
    schedule: Option<&str>,
    timezone: Option<&str>,
    jitter: Option<&str>,
    max_age: Option<&str>,
) -> Result<Option<JobSchedule>, ConfigError> {
    let Some(expr) = schedule else {
        for (key, v) in [
            ("timezone", timezone),
            ("jitter", jitter),
            ("max-age", max_age),
        ] {
            if v.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "job.{job}.{key} is set but the job has no schedule; add e.g. schedule = \"15 3 * * *\""
                )));
            }
        }
        return Ok(None);
    };
    cron(expr).map_err(|m| {
        ConfigError::Invalid(format!(
            "job.{job}.schedule = \"{expr}\": {m}; {CRON_EXAMPLE}"
        ))
    })?;
    let (timezone, zone_from) = match timezone {
        Some(name) => (
            name.trim().parse::<Tz>().map_err(|_| {
                ConfigError::Invalid(format!(
                    "job.{job}.timezone = \"{name}\": not an IANA time zone; e.g. \"Europe/Berlin\", \"America/New_York\", \"UTC\""
                ))
            })?,
            ZoneFrom::Config,
        ),
        None => machine_zone(),
    };
    let duration = |key: &str, v: Option<&str>| -> Result<Option<Duration>, ConfigError> {
        v.map(|t| {
            parse_duration(t).map_err(|m| ConfigError::Invalid(format!("job.{job}.{key}: {m}")))
        })
        .transpose()
    };
    let jitter = duration("jitter", jitter)?.unwrap_or_default();
    let max_age = duration("max-age", max_age)?;
    if max_age.is_some_and(|d| d.is_zero()) {
        return Err(ConfigError::Invalid(format!(
            "job.{job}.max-age must be more than 0s; e.g. \"26h\" for a daily job"
        )));
    }
    Ok(Some(JobSchedule {
        expr: expr.trim().to_string(),
        timezone,
        zone_from,
        jitter,
        max_age,
    }))
}
