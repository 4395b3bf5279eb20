//! Progress reporting: an indicatif bar on a TTY (bytes, rate, current source), plain log lines otherwise.
//! Cheap to clone and to call from the packer thread.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The containers held now, shown on the bar with the time they have been held (redrawn at every tick).
    held: Arc<Mutex<Option<Held>>>,
    /// The bar shows a wait (no byte count) until the next phase or byte count.
    waiting: Arc<AtomicBool>,
}

/// Containers a run holds (paused or stopped) while it reads their source.
#[derive(Clone, Debug)]
struct Held {
    names: Vec<String>,
    /// `paused`, `stopped` or `paused/stopped`.
    action: &'static str,
    since: Instant,
}

impl Held {
    /// "holding web, db (paused 3.2 s)" at `now`.
    fn text(&self, now: Instant) -> String {
        format!(
            "holding {} ({} {:.1} s)",
            self.names.join(", "),
            self.action,
            now.saturating_duration_since(self.since).as_secs_f64()
        )
    }
}

impl Progress {
    /// A bar when stderr is a terminal and `enabled`, otherwise log lines only.
    pub fn new(enabled: bool) -> Progress {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
        let p = Progress {
            bar: Some(bar),
            held: Default::default(),
            waiting: Default::default(),
        };
        p.restyle(OPEN_ENDED);
        if let Some(b) = &p.bar {
            b.enable_steady_tick(Duration::from_millis(200));
        }
        p
    }

    /// The bar's style from `template`, with the `{held}` key drawn from the containers held now.
    fn restyle(&self, template: &str) {
        if let Some(b) = &self.bar {
            let me = self.clone_without_bar();
            b.set_style(style(template).with_key(
                "held",
                move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let mut s = String::new();
                    me.held_key(&mut s);
                    let _ = w.write_str(&s);
                },
            ));
        }
    }

    /// The held state only (a bar's style must not own the bar).
    fn clone_without_bar(&self) -> Progress {
        Progress {
            bar: None,
            held: self.held.clone(),
            waiting: self.waiting.clone(),
        }
    }

    /// The text of the `{held}` key: "holding web, db (paused 3.2 s); ", or nothing.
    fn held_key(&self, out: &mut String) {
        if let Some(h) = self.held.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            out.push_str(&h.text(Instant::now()));
            out.push_str("; ");
        }
    }

    /// These containers are held from now on (`action`: `paused`, `stopped`, `paused/stopped`).
    pub fn holding(&self, names: &[String], action: &'static str) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(Held {
            names: names.to_vec(),
            action,
            since: Instant::now(),
        });
    }

    /// The held containers were resumed.
    pub fn released(&self) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Count the next bytes against `total` when it is known (a stored object being read back: percentage and
    /// ETA), else open-ended. Starts the count at zero.
    pub fn expect_bytes(&self, total: Option<u64>) {
        self.waiting.store(false, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_position(0);
            b.reset_eta();
            match total {
                Some(t) => {
                    b.set_length(t);
                    self.restyle(KNOWN_TOTAL);
                }
                None => {
                    b.unset_length();
                    self.restyle(OPEN_ENDED);
                }
            }
        }
    }

    /// No output at all (tests, `--json`).
    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            held: Default::default(),
            waiting: Default::default(),
        }
    }

    /// A new phase (e.g. `backing up pgdata`).
    pub fn phase(&self, what: &str) {
        if self.waiting.swap(false, Ordering::Relaxed) {
            self.restyle(OPEN_ENDED);
            if let Some(b) = &self.bar {
                b.reset_elapsed();
            }
        }
        match &self.bar {
            Some(b) => {
                b.set_prefix(what.to_string());
                b.set_message("");
            }
            None => tracing::info!("{what}"),
        }
    }

    /// A status note on the current phase (e.g. `pausing 2 containers`).
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => tracing::info!("{msg}"),
        }
    }

    /// Waiting for something (another run's lock): the line says what and for how long, without a byte count,
    /// until the next phase.
    pub fn waiting(&self, msg: &str) {
        match &self.bar {
            Some(b) => {
                if !self.waiting.swap(true, Ordering::Relaxed) {
                    self.restyle(WAITING);
                    b.reset_elapsed();
                }
                b.set_message(msg.to_string());
            }
            None => tracing::info!("{msg}"),
        }
    }

    /// Bytes read since the last call.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Print a line above the bar (warnings) or to the log.
    pub fn warn(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| tracing::warn!("{msg}")),
            None => tracing::warn!("{msg}"),
        }
    }

    /// A warning the command's report carries and its summary prints: logged at info level only (`-v`), so that
    /// each warning is printed once per run.
    pub fn reported(&self, msg: &str) {
        tracing::info!("{msg}");
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

const OPEN_ENDED: &str =
    "{spinner} {prefix:.bold} {held}{msg} {bytes} read, {binary_bytes_per_sec}, {elapsed}";
const WAITING: &str = "{spinner} {prefix:.bold} {msg}, waited {elapsed}";
const KNOWN_TOTAL: &str =
    "{spinner} {prefix:.bold} {held}{msg} [{bar:20}] {bytes}/{total_bytes} ({percent}%), \
     {binary_bytes_per_sec}, eta {eta}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

/// Human size: 1536 → "1.5 KiB".
pub fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: the TTY line says which containers are held, how, and for how long.
    #[test]
    fn issue10_the_bar_says_which_containers_are_held_and_since_when() {
        let web_db = ["web".to_string(), "db".to_string()];
        let held = Held {
            names: web_db.to_vec(),
            action: "paused",
            since: Instant::now() - Duration::from_millis(3_240),
        };
        assert_eq!(
            held.text(held.since + Duration::from_millis(3_240)),
            "holding web, db (paused 3.2 s)"
        );
        let stopped = Held {
            names: vec!["pg".into()],
            action: "stopped",
            since: held.since,
        };
        assert_eq!(
            stopped.text(held.since + Duration::from_secs(75)),
            "holding pg (stopped 75.0 s)"
        );
        // Through the bar's template key: held, then released.
        let p = Progress::hidden();
        let mut out = String::new();
        p.held_key(&mut out);
        assert_eq!(out, "", "nothing held");
        p.holding(&web_db, "paused");
        p.held_key(&mut out);
        assert!(out.starts_with("holding web, db (paused 0."), "{out}");
        assert!(out.ends_with(" s); "), "{out}");
        p.released();
        out.clear();
        p.held_key(&mut out);
        assert_eq!(out, "");
    }
}
