//! Rendering helpers shared by the commands: stdout writers, human sizes and durations, plain tables.

use std::io::Write;

use chrono::{DateTime, Utc};

use super::EXIT_OK;

/// Write to stdout, exiting quietly on a closed pipe (`voltar list | head`).
pub fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_OK);
        }
    }
}

/// A report on stdout: `--json`, or the text `render` makes of it.
pub fn emit<T: serde::Serialize>(json: bool, report: &T, render: impl FnOnce(&T) -> String) {
    if json {
        out_json(report);
    } else {
        out(&render(report));
    }
}

pub fn out_json<T: serde::Serialize>(v: &T) {
    let mut s = serde_json::to_string_pretty(v).expect("serializable");
    s.push('\n');
    out(&s);
}

/// Human size (lives with the progress display, below every command module).
pub use crate::progress::human;

pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// A plain text table: first row is the header. Columns are padded; numbers are right-aligned.
pub fn table(rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut w = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let numeric = |s: &str| {
        !s.is_empty() && s.chars().next().is_some_and(|c| c.is_ascii_digit()) && !s.contains(' ')
            || s.ends_with("iB")
            || s.ends_with(" B")
    };
    let mut out = String::new();
    for (ri, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if ri > 0 && numeric(c) {
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                if i + 1 < r.len() {
                    line.push_str(&" ".repeat(pad));
                }
            }
            if i + 1 < r.len() {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One container hook that ran, as the backup summary and `voltar show` print it:
/// "hook: SOURCE: CONTAINER PHASE `COMMAND` [as USER]: RESULT in DURATION".
pub(super) fn hook_line(source: &str, h: &crate::catalog::HookRecord) -> String {
    use crate::catalog::HookOutcome;
    let result = match (h.outcome, h.exit_code) {
        (HookOutcome::Ok, _) => "ok".into(),
        (HookOutcome::Failed, Some(c)) => format!("FAILED (exit code {c})"),
        (HookOutcome::Failed, None) => "FAILED".into(),
        (HookOutcome::TimedOut, _) => "TIMED OUT".into(),
        (HookOutcome::Error, _) => "NOT RUN (engine error)".into(),
        (HookOutcome::Interrupted, _) => "interrupted".into(),
    };
    format!(
        "hook: {source}: {} {} `{}`{}: {result} in {}\n",
        h.container,
        h.phase,
        h.command,
        h.user
            .as_ref()
            .map(|u| format!(" as {u}"))
            .unwrap_or_default(),
        human_ms(h.duration_ms)
    )
}

/// "1 entry", "3 entries".
pub(super) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub(super) fn local_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
        assert_eq!(human_ms(1500), "1.5s");
        assert_eq!(human_ms(61_000), "1m01s");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&[
            vec!["A".into(), "SIZE".into()],
            vec!["long-name".into(), "1.0 KiB".into()],
            vec!["x".into(), "10.0 MiB".into()],
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1].len(), lines[2].len(), "{t}");
        assert!(lines[2].starts_with("x "), "{t}");
    }
}
