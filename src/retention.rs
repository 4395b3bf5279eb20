//! Retention: pure logic. `plan(policy, backups, now, tz)` → keep/delete decisions, each with its reasons.
//! No I/O here; `prune` applies the plan.

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
