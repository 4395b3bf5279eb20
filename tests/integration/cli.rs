//! Issue 10, "Consistency for scripts and humans": what every command says, for scripts (`--json`) and humans
//! (help, messages), through the real binary. No test here needs a service except where it says so.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::Out;

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

/// A temp dir holding a state dir, a working dir without config files and an empty target directory.
struct Here {
    dir: tempfile::TempDir,
}

impl Here {
    fn new() -> Here {
        let dir = tempfile::tempdir().unwrap();
        for d in ["state", "cwd", "target"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Here { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn target(&self) -> String {
        self.path("target").display().to_string()
    }

    /// Write a config file and return its path.
    fn config(&self, text: &str) -> String {
        let p = self.path("voltar.toml");
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn voltar(&self, args: &[&str]) -> Out {
        Command::new(BIN)
            .args(args)
            .current_dir(self.path("cwd"))
            .env("VOLTAR_STATE_DIR", self.path("state"))
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .output()
            .expect("run voltar")
            .into()
    }
}

/// The error line of a failed run (stderr `voltar: error: …`), asserting exit 2 and that it is the only line.
#[track_caller]
fn error_line(args: &[&str], out: &Out) -> String {
    assert_eq!(out.code, 2, "voltar {args:?}: {out:?}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "voltar {args:?}: {out:?}");
    lines[0]
        .strip_prefix("voltar: error: ")
        .unwrap_or_else(|| panic!("voltar {args:?}: {out:?}"))
        .to_string()
}

/// Issue 10: an argument that is not a backup id is said once, not wrapped in "no backup `…` in this target".
#[test]
fn issue10_not_a_backup_id_is_not_double_wrapped() {
    let h = Here::new();
    let t = h.target();
    for cmd in ["show", "restore", "verify"] {
        let args = [cmd, "nosuch", "-t", &t];
        let msg = error_line(&args, &h.voltar(&args));
        assert_eq!(
            msg,
            "`nosuch` is neither a backup id nor `latest` (ids look like 20261128T170327Z-a1b2; see `voltar list`)",
            "voltar {args:?}"
        );
    }
}

/// Issue 10: times in messages have no fractions of seconds (`--before 2d` is computed from the clock).
#[test]
fn issue10_times_in_messages_have_no_nanoseconds() {
    let h = Here::new();
    let t = h.target();
    let args = ["restore", "latest", "--before", "2d", "-t", &t];
    let msg = error_line(&args, &h.voltar(&args));
    let time = msg
        .strip_prefix("no backup `latest before ")
        .and_then(|m| m.split_once('`'))
        .map(|(time, _)| time)
        .unwrap_or_else(|| panic!("{msg}"));
    // 2026-11-28 13:17:12 UTC
    assert_eq!(time.len(), "2026-11-28 13:17:12 UTC".len(), "{msg}");
    assert!(!time.contains('.') && time.ends_with(" UTC"), "{msg}");
}

/// Issue 10: a value of the wrong type is named in the user's words ("a whole number"), not Rust's ("u32",
/// "invalid digit found in string"), in the config file and on the command line.
#[test]
fn issue10_type_errors_are_in_user_words() {
    let h = Here::new();
    let t = h.target();
    for (value, shown) in [("\"x\"", "string \"x\""), ("-1", "integer `-1`")] {
        let cfg = h.config(&format!("[retention]\nkeep-daily = {value}\n"));
        let args = ["-c", &cfg, "list", "-t", &t];
        let msg = error_line(&args, &h.voltar(&args));
        assert!(
            msg.ends_with(&format!(
                "line 2, column 14: invalid {} {shown}, expected a whole number (0 or more)",
                if value == "-1" { "value:" } else { "type:" }
            )),
            "{msg}"
        );
    }
    let archive = h.path("a.tar");
    std::fs::write(&archive, b"").unwrap();
    let archive = archive.display().to_string();
    for args in [
        vec!["prune", "-t", &t, "--keep-last", "x"],
        vec!["prune", "-t", &t, "--keep-daily=-3"],
        vec![
            "restore",
            "--archive",
            &archive,
            "--to-dir",
            &t,
            "--strip-components",
            "one",
        ],
    ] {
        let out = h.voltar(&args);
        assert_eq!(out.code, 2, "voltar {args:?}: {out:?}");
        assert!(
            out.stderr.contains("expected a whole number (0 or more)"),
            "voltar {args:?}: {out:?}"
        );
        assert!(!out.stderr.contains("digit"), "voltar {args:?}: {out:?}");
    }
}
