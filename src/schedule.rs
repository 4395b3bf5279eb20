//! When a job runs: a cron expression read in an IANA time zone. [`Schedule::next_after`] is pure (time is passed
//! in), so the daemon, `voltar status` and the tests agree on every run time.

//!
//! Daylight saving, decided here and tested below (Europe/Berlin's two changes a year):
//!
//! * A local time the clock skips (02:30 on the spring-forward day, when 02:00 jumps to 03:00) runs at the moment
//!   the clock jumps (03:00 new time), once: several slots inside the gap (`*/15`) are one run, which is also the
//!   run of the slot at the jump itself. Skipping it instead would lose a nightly backup once a year.
//! * A local time the clock shows twice (02:30 on the fall-back day) runs once, the first time (summer time).
//!   Slots inside the repeated hour are not run again on its second pass, so a nightly job never runs twice a
//!   night (a job every few minutes pauses for that hour instead).
//!
//! How: the cron expression is matched against wall-clock (naive local) times, which have no gaps or repeats,
//! and each matching wall-clock time is then placed on the time line by the rules above. `croner` alone places
//! a repeated time on its first occurrence also when that is already past, which would start a second run at
//! once during the repeated hour.
//!
//! Alternatives rejected: computing in UTC (a 03:15 job would move by an hour twice a year), and `cron`'s
//! `Schedule::after` (it matches in the zone directly, with the same two traps).

use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::{self, JobSchedule};

/// Seconds searched forward for the end of a gap in local time (real gaps are one hour, at most two).
const MAX_GAP_SECS: i64 = 3 * 3600;

/// A parsed cron expression in a time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: croner::Cron,
    zone: Tz,
    expr: String,
}

impl Schedule {
    /// Parse `expr` (see `config::cron`), read in `zone`.
    pub fn new(expr: &str, zone: Tz) -> Result<Schedule, String> {
        Ok(Schedule {
            cron: config::cron(expr)?,
            zone,
            expr: expr.trim().to_string(),
        })
    }

    /// The schedule of a job as configured (already checked at load).
    pub fn of(s: &JobSchedule) -> Result<Schedule, String> {
        Schedule::new(&s.expr, s.timezone)
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first run time strictly after `now`; `None` when the expression matches no later date (only past
    /// year 4999: expressions that never match are refused at load).
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut wall = now.with_timezone(&self.zone).naive_local();
        // Each turn moves `wall` forward to the next matching wall-clock time; a handful of turns at most (the
        // slots inside one gap or one repeated hour).
        for _ in 0..10_000 {
            wall = self.next_wall_after(wall)?;
            match self.zone.from_local_datetime(&wall) {
                LocalResult::Single(t) => {
                    let t = t.with_timezone(&Utc);
                    if t > now {
                        return Some(t);
                    }
                }
                // Shown twice: the first time only.
                LocalResult::Ambiguous(first, _) => {
                    let t = first.with_timezone(&Utc);
                    if t > now {
                        return Some(t);
                    }
                }
                // Skipped by the clock: when it jumps.
                LocalResult::None => {
                    let t = self.end_of_gap(wall)?;
                    if t > now {
                        return Some(t);
                    }
                }
            }
        }
        None
    }

    /// The next `n` run times after `now`.
    pub fn upcoming(&self, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = now;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// The time between the next two runs after `now` (the default `max-age` is two of them).
    pub fn interval(&self, now: DateTime<Utc>) -> Duration {
        match self.upcoming(now, 2)[..] {
            [a, b] => (b - a).to_std().unwrap_or_default(),
            _ => Duration::from_secs(366 * 86400),
        }
    }

    /// The next wall-clock time after `wall` that the expression matches.
    fn next_wall_after(&self, wall: NaiveDateTime) -> Option<NaiveDateTime> {
        // UTC has no gaps or repeats: croner then matches plain wall-clock times.
        let as_utc = Utc.from_utc_datetime(&wall);
        self.cron
            .find_next_occurrence(&as_utc, false)
            .ok()
            .map(|t| t.naive_utc())
    }

    /// The first instant after the gap that local time `wall` falls in.
    fn end_of_gap(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        (1..=MAX_GAP_SECS).find_map(|s| {
            match self
                .zone
                .from_local_datetime(&(wall + chrono::Duration::seconds(s)))
            {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                    Some(t.with_timezone(&Utc))
                }
                LocalResult::None => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::Berlin;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The run times after `from`, `n` of them, each computed from the previous one.
    fn runs(expr: &str, zone: Tz, from: &str, n: usize) -> Vec<String> {
        let s = Schedule::new(expr, zone).unwrap();
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = s.next_after(t).expect("a next run");
            out.push(t.to_rfc3339());
        }
        out
    }

    /// Table: expression, zone, from (UTC), the next runs (UTC).
    #[test]
    fn next_runs_across_dst_and_a_leap_day() {
        let cases: &[(&str, Tz, &str, &[&str])] = &[
            // Plain days in winter (CET, UTC+1) and summer (CEST, UTC+2).
            (
                "15 3 * * *",
                Berlin,
                "2026-01-10T00:00:00Z",
                &["2026-01-10T02:15:00+00:00", "2026-01-11T02:15:00+00:00"],
            ),
            (
                "15 3 * * *",
                Berlin,
                "2026-07-10T00:00:00Z",
                &["2026-07-10T01:15:00+00:00", "2026-07-11T01:15:00+00:00"],
            ),
            // Spring forward, Sunday 2026-03-29: 02:00 CET jumps to 03:00 CEST, 02:30 does not exist. The 02:30 job
            // runs when the clock jumps (03:00 CEST = 01:00 UTC), once, then at 02:30 CEST on the next days.
            (
                "30 2 * * *",
                Berlin,
                "2026-03-28T12:00:00Z",
                &[
                    "2026-03-29T01:00:00+00:00",
                    "2026-03-30T00:30:00+00:00",
                    "2026-03-31T00:30:00+00:00",
                ],
            ),
            // Every 15 minutes through the gap: 02:00, 02:15, 02:30, 02:45 do not exist; they are one run at the
            // jump (03:00 CEST), which is also the 03:00 slot: no run is doubled.
            (
                "*/15 * * * *",
                Berlin,
                "2026-03-29T00:40:00Z",
                &[
                    "2026-03-29T00:45:00+00:00",
                    "2026-03-29T01:00:00+00:00",
                    "2026-03-29T01:15:00+00:00",
                ],
            ),
            // Fall back, Sunday 2026-10-25: 03:00 CEST goes back to 02:00 CET, 02:30 happens twice. The job runs
            // once, at the first 02:30 (CEST, 00:30 UTC), not again at the second (CET, 01:30 UTC).
            (
                "30 2 * * *",
                Berlin,
                "2026-10-24T12:00:00Z",
                &[
                    "2026-10-25T00:30:00+00:00",
                    "2026-10-26T01:30:00+00:00",
                    "2026-10-27T01:30:00+00:00",
                ],
            ),
            // Leap day: only in leap years.
            (
                "0 0 29 2 *",
                Tz::UTC,
                "2026-01-01T00:00:00Z",
                &["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"],
            ),
            (
                "0 0 29 2 *",
                Berlin,
                "2028-02-28T23:30:00Z",
                &["2032-02-28T23:00:00+00:00"],
            ),
            // Seconds first, and the nicknames.
            (
                "*/2 * * * * *",
                Tz::UTC,
                "2026-05-01T10:00:01Z",
                &["2026-05-01T10:00:02+00:00", "2026-05-01T10:00:04+00:00"],
            ),
            (
                "@hourly",
                Tz::UTC,
                "2026-05-01T10:00:00Z",
                &["2026-05-01T11:00:00+00:00"],
            ),
            (
                "@daily",
                Berlin,
                "2026-05-01T10:00:00Z",
                &["2026-05-01T22:00:00+00:00"],
            ),
            (
                "@weekly",
                Tz::UTC,
                "2026-05-01T10:00:00Z",
                &["2026-05-03T00:00:00+00:00"],
            ),
            (
                "@monthly",
                Tz::UTC,
                "2026-05-01T10:00:00Z",
                &["2026-06-01T00:00:00+00:00"],
            ),
            (
                "@yearly",
                Tz::UTC,
                "2026-05-01T10:00:00Z",
                &["2027-01-01T00:00:00+00:00"],
            ),
        ];
        for (expr, zone, from, want) in cases {
            assert_eq!(
                runs(expr, *zone, from, want.len()),
                *want,
                "{expr} in {zone} from {from}"
            );
        }
    }

    /// The same schedule read at two clocks inside the repeated hour of the fall-back day: from the second
    /// pass (02:10 CET) the 02:30 that already ran (in CEST) is not run again.
    #[test]
    fn the_repeated_hour_runs_once_whichever_pass_the_clock_is_in() {
        let s = Schedule::new("30 2 * * *", Berlin).unwrap();
        // First pass, 02:10 CEST: the first 02:30 is next.
        assert_eq!(
            s.next_after(utc("2026-10-25T00:10:00Z")).unwrap(),
            utc("2026-10-25T00:30:00Z")
        );
        // Second pass, 02:10 CET: that 02:30 already happened an hour ago.
        assert_eq!(
            s.next_after(utc("2026-10-25T01:10:00Z")).unwrap(),
            utc("2026-10-26T01:30:00Z")
        );
        // Exactly at a run time, the next one is the one after.
        assert_eq!(
            s.next_after(utc("2026-10-25T00:30:00Z")).unwrap(),
            utc("2026-10-26T01:30:00Z")
        );
    }

    #[test]
    fn interval_is_the_gap_between_the_next_two_runs() {
        let s = Schedule::new("15 3 * * *", Berlin).unwrap();
        assert_eq!(
            s.interval(utc("2026-01-10T00:00:00Z")),
            std::time::Duration::from_secs(86400)
        );
        let s = Schedule::new("*/2 * * * * *", Tz::UTC).unwrap();
        assert_eq!(
            s.interval(utc("2026-01-10T00:00:00Z")),
            std::time::Duration::from_secs(2)
        );
    }
}
