//! Issue 10, "Consistency for scripts and humans": what every command says, for scripts (`--json`) and humans
//! (help, messages), through the real binary. No test here needs a service except where it says so.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::Out;

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

/// A temp dir holding a state dir, a working dir without config files and an empty target directory.
pub(crate) struct Here {
    dir: tempfile::TempDir,
}

impl Here {
    pub(crate) fn new() -> Here {
        let dir = tempfile::tempdir().unwrap();
        for d in ["state", "cwd", "target"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Here { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn target(&self) -> String {
        self.path("target").display().to_string()
    }

    /// Write a config file and return its path.
    pub(crate) fn config(&self, text: &str) -> String {
        let p = self.path("voltar.toml");
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    pub(crate) fn voltar(&self, args: &[&str]) -> Out {
        Command::new(BIN)
            .args(args)
            .current_dir(self.path("cwd"))
            .env("VOLTAR_STATE_DIR", self.path("state"))
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .env_remove("RUST_BACKTRACE")
            // Credentials that are there (any will do: no request gets that far).
            .env("AWS_ACCESS_KEY_ID", "voltar-test")
            .env("AWS_SECRET_ACCESS_KEY", "voltar-test")
            .stdin(Stdio::null())
            .output()
            .expect("run voltar")
            .into()
    }
}

/// The `{"error": …, "exit-code": …}` document a failed `--json` command prints on stdout; checks that it has
/// exactly these two fields, that the exit code is the process's and that stderr still has the human line.
#[track_caller]
fn json_error(args: &[&str], out: &Out, code: i32) -> String {
    assert_eq!(out.code, code, "voltar {args:?}: {out:?}");
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("voltar {args:?}: stdout is not JSON ({e}): {out:?}"));
    let obj = v.as_object().unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        ["error", "exit-code"],
        "{v:#}"
    );
    assert_eq!(v["exit-code"], code, "{v:#}");
    let msg = v["error"].as_str().unwrap().to_string();
    assert!(!msg.is_empty() && !msg.contains('\n'), "{v:#}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("voltar: error: ") || l.starts_with("error: ")),
        "the human line on stderr is kept: {out:?}"
    );
    msg
}

/// Issue 10: with `--json`, a fatal error of any command is JSON on stdout too, with the unchanged exit code: a
/// bad config, a missing config file, an unknown backup, a target that cannot be reached, an engine that does not
/// answer, a usage error (clap) and a flag value of the wrong type.
#[test]
fn issue10_json_errors_are_json_on_stdout() {
    let h = Here::new();
    let t = h.target();
    let bad = h.config("[bogus]\nkey = 1\n");
    let missing = h.path("nowhere.toml").display().to_string();
    let no_engine = h.path("no-engine.toml");
    std::fs::write(
        &no_engine,
        format!(
            "[docker]\nhost = \"unix://{}\"\n",
            h.path("no-docker.sock").display()
        ),
    )
    .unwrap();
    let no_engine = no_engine.display().to_string();
    // A host name that cannot resolve (`.invalid` is reserved): the target cannot be reached.
    let unreachable = "s3://bucket/prefix?endpoint=http://voltar-test.invalid&path-style=1";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--json", "-c", &bad, "list", "-t", &t], "bogus"),
        (
            vec!["--json", "-c", &missing, "list", "-t", &t],
            "nowhere.toml",
        ),
        (vec!["--json", "show", "nosuch", "-t", &t], "nosuch"),
        (vec!["--json", "restore", "nosuch", "-t", &t], "nosuch"),
        (vec!["--json", "verify", "nosuch", "-t", &t], "nosuch"),
        (
            vec!["--json", "list", "-t", unreachable],
            "voltar-test.invalid",
        ),
        (vec!["--json", "-c", &no_engine, "plan"], "no-docker.sock"),
        (vec!["--json", "list", "--bogus"], "--bogus"),
        (vec!["list", "--bogus", "--json"], "--bogus"),
        (
            vec!["--json", "prune", "-t", &t, "--keep-last", "x"],
            "--keep-last",
        ),
    ];
    for (args, names) in cases {
        let out = h.voltar(&args);
        let msg = json_error(&args, &out, 2);
        assert!(msg.contains(names), "voltar {args:?}: {msg}");
    }
    // Help and version are not errors: no error document.
    let out = h.voltar(&["--json", "--help"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("\"error\""), "{out:?}");
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

/// Issue 10: `backup --json` has an overall `status` that goes with the exit code (`ok` 0; `partial` 1 when one
/// of two targets cannot be written), and `list --json` carries each backup's tags. The `incomplete` status is
/// checked in `backup::issue8_unreadable_entries_make_the_source_incomplete_and_the_run_exit_1`.
#[test]
fn issue10_backup_json_status_goes_with_the_exit_code() {
    crate::require_docker!();
    let mut c = crate::support::Cleanup::default();
    let h = Here::new();
    let t = h.target();
    let vol = c.volume("status");
    std::fs::write(crate::support::mountpoint(&vol).join("f"), b"x").unwrap();

    let args = ["--json", "backup", "--only", &vol, "-t", &t];
    let ok = h.voltar(&args);
    assert_eq!(ok.code, 0, "{ok:?}");
    let report: Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(report["status"], "ok", "{report:#}");

    let file = h.path("a-file");
    std::fs::write(&file, b"not a dir").unwrap();
    let file = file.display().to_string();
    let args = ["--json", "backup", "--only", &vol, "-t", &t, "-t", &file];
    let partial = h.voltar(&args);
    assert_eq!(partial.code, 1, "{partial:?}");
    let report: Value = serde_json::from_str(&partial.stdout).unwrap();
    assert_eq!(report["status"], "partial", "{report:#}");
    assert_eq!(report["sources"][0]["status"], "partial", "{report:#}");

    let list = h.voltar(&["--json", "list", "-t", &t]);
    assert_eq!(list.code, 0, "{list:?}");
    let l: Value = serde_json::from_str(&list.stdout).unwrap();
    let backups = l["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{l:#}");
    for b in backups {
        assert_eq!(b["tags"], serde_json::json!([]), "{b:#}");
    }
}

/// A tar of one small file, for `restore --archive`.
fn small_tar(h: &Here) -> String {
    let src = h.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"hi").unwrap();
    let archive = h.path("a.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    b.append_dir_all(".", &src).unwrap();
    b.finish().unwrap();
    archive.display().to_string()
}

/// Issue 10: `restore --archive … --dry-run --json` is JSON too (it printed its one text line), and the dry run
/// does not create the directory it names.
#[test]
fn issue10_import_dry_run_is_json_with_json() {
    let h = Here::new();
    let archive = small_tar(&h);
    let to = h.path("out").display().to_string();
    let args = [
        "--json",
        "restore",
        "--archive",
        &archive,
        "--to-dir",
        &to,
        "--dry-run",
    ];
    let out = h.voltar(&args);
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"));
    assert_eq!(v["dry-run"], true, "{v:#}");
    assert_eq!(v["archive"], archive.as_str(), "{v:#}");
    assert!(v["destination"].to_string().contains(&to), "{v:#}");
    assert!(!h.path("out").exists(), "a dry run writes nothing");
}

/// A dry run of `restore --archive … --to-volume NEW` does not create the volume (it did, and left it behind).
#[test]
fn import_dry_run_creates_no_volume() {
    crate::require_docker!();
    let h = Here::new();
    let archive = small_tar(&h);
    let mut c = crate::support::Cleanup::default();
    let vol = crate::support::unique("import-dry");
    c.volumes.push(vol.clone());
    let args = [
        "restore",
        "--archive",
        &archive,
        "--to-volume",
        &vol,
        "--dry-run",
    ];
    let out = h.voltar(&args);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&vol), "{out:?}");
    assert!(
        !crate::support::volume_exists(&vol),
        "the dry run created {vol}"
    );
}
