//! Progress reporting: an indicatif bar on a TTY (bytes, rate, current source), plain log lines otherwise.
//! Cheap to clone and to call from the packer thread.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar when stderr is a terminal and `enabled`, otherwise log lines only.
    pub fn new(enabled: bool) -> Progress {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
        bar.set_style(style(OPEN_ENDED));
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar) }
    }

    /// Count the next bytes against `total` when it is known (a stored object being read back: percentage and
    /// ETA), else open-ended. Starts the count at zero.
    pub fn expect_bytes(&self, total: Option<u64>) {
        if let Some(b) = &self.bar {
            b.set_position(0);
            b.reset_eta();
            match total {
                Some(t) => {
                    b.set_length(t);
                    b.set_style(style(KNOWN_TOTAL));
                }
                None => {
                    b.unset_length();
                    b.set_style(style(OPEN_ENDED));
                }
            }
        }
    }

    /// No output at all (tests, `--json`).
    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    /// A new phase (e.g. `backing up pgdata`).
    pub fn phase(&self, what: &str) {
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
    "{spinner} {prefix:.bold} {msg} {bytes} read, {binary_bytes_per_sec}, {elapsed}";
const KNOWN_TOTAL: &str =
    "{spinner} {prefix:.bold} {msg} [{bar:20}] {bytes}/{total_bytes} ({percent}%), \
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
