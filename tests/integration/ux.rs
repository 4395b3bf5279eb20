//! Issue 10, the rest of "what a new user still trips over": read commands over every target, warnings once,
//! dry-run and plan details. Through the real binary and the real engine.

use serde_json::Value;

use crate::cli::Here;
use crate::support::{self, Cleanup, Out};

/// A configured S3 target whose host the resolver says does not exist (`.invalid` is reserved): it cannot be
/// read, and fails at once.
const GONE: &str = "[target.gone]\ntype = \"s3\"\nbucket = \"b\"\nprefix = \"p\"\n\
    endpoint = \"http://voltar-test.invalid\"\npath-style = true\nregion = \"us-east-1\"\n";

fn local_target(name: &str, path: &str) -> String {
    format!("[target.{name}]\ntype = \"local\"\npath = \"{path}\"\n")
}

fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"))
}

/// A volume with one file, backed up by `voltar backup` into each of `targets` (one run, one id).
fn backed_up(h: &Here, c: &mut Cleanup, targets: &[&str]) -> (String, String) {
    let vol = c.volume("ux");
    std::fs::write(support::mountpoint(&vol).join("f"), b"data").unwrap();
    let mut args = vec!["--json", "backup", "--only", &vol];
    for t in targets {
        args.extend_from_slice(&["-t", t]);
    }
    let b = h.voltar(&args);
    assert_eq!(b.code, 0, "{b:?}");
    let id = json(&b)["id"]
        .as_str()
        .expect("backup --json has the id")
        .to_string();
    (vol, id)
}

/// Issue 10: `list`, `show` and `verify` read every target of the job when no `--target` is given (and take
/// `--target` repeatedly): `list` has a heading per target and the target of each backup in `--json`; `show`
/// says which target it read and where else the backup is; `verify --all` checks each target.
#[test]
fn issue10_read_commands_read_every_target_of_the_job() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let h = Here::new();
    let (a, b) = (
        h.path("a").display().to_string(),
        h.path("b").display().to_string(),
    );
    let (_vol, id) = backed_up(&h, &mut c, &[&a, &b]);
    let cfg = h.config(&format!(
        "{}{}[job.default]\ntargets = [\"a\", \"b\"]\n",
        local_target("a", &a),
        local_target("b", &b)
    ));

    let l = h.voltar(&["-c", &cfg, "list"]);
    assert_eq!(l.code, 0, "{l:?}");
    for t in [&a, &b] {
        assert!(l.stdout.contains(&format!("1 backup(s) in {t}\n")), "{l:?}");
    }
    assert_eq!(l.stdout.matches(&id).count(), 2, "{l:?}");
    for args in [
        vec!["-c", &cfg, "--json", "list"],
        vec!["--json", "list", "-t", &a, "-t", &b],
    ] {
        let l = h.voltar(&args);
        assert_eq!(l.code, 0, "{args:?}: {l:?}");
        let v = json(&l);
        let targets: Vec<&str> = v["backups"]
            .as_array()
            .unwrap()
            .iter()
            .inspect(|b| assert_eq!(b["id"], id.as_str(), "{v:#}"))
            .map(|b| b["target"].as_str().unwrap())
            .collect();
        assert_eq!(targets, [a.as_str(), b.as_str()], "{v:#}");
        assert_eq!(v["targets"][0]["target"], a.as_str(), "{v:#}");
        assert_eq!(v["targets"][1]["target"], b.as_str(), "{v:#}");
    }

    let s = h.voltar(&["-c", &cfg, "show", "latest"]);
    assert_eq!(s.code, 0, "{s:?}");
    assert!(
        s.stdout.starts_with(&format!("backup {id} in {a}\n")),
        "{s:?}"
    );
    assert!(s.stdout.contains(&format!("also in: {b}\n")), "{s:?}");
    let s = h.voltar(&["-c", &cfg, "--json", "show", &id]);
    assert_eq!(s.code, 0, "{s:?}");
    let v = json(&s);
    assert_eq!(v["target"], a.as_str(), "{v:#}");
    assert_eq!(v["also-in"], serde_json::json!([b]), "{v:#}");
    assert_eq!(v["id"], id.as_str(), "{v:#}");

    let r = h.voltar(&["-c", &cfg, "verify", "--all"]);
    assert_eq!(r.code, 0, "{r:?}");
    for t in [&a, &b] {
        assert!(
            r.stdout
                .contains(&format!("1 object(s) checked in {t}, 0 problem(s)")),
            "{r:?}"
        );
    }
    let r = h.voltar(&["-c", &cfg, "--json", "verify", "--all"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    let checked: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|c| assert_eq!(c["ok"], true, "{v:#}"))
        .map(|c| c["target"].as_str().unwrap())
        .collect();
    assert_eq!(checked, [a.as_str(), b.as_str()], "{v:#}");
}

/// Issue 10: a target that cannot be read is reported and the others are still shown, with exit 1; exit 2 only
/// when no target could be read.
#[test]
fn issue10_an_unreadable_target_is_reported_beside_the_others() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let h = Here::new();
    let a = h.path("a").display().to_string();
    let (_vol, id) = backed_up(&h, &mut c, &[&a]);
    let cfg = h.config(&format!(
        "{}{GONE}[job.default]\ntargets = [\"gone\", \"a\"]\n",
        local_target("a", &a)
    ));

    let l = h.voltar(&["-c", &cfg, "list"]);
    assert_eq!(l.code, 1, "{l:?}");
    assert!(
        l.stdout.contains(&id),
        "the readable target is shown: {l:?}"
    );
    assert!(l.all().contains("voltar-test.invalid"), "{l:?}");
    let v = json(&h.voltar(&["-c", &cfg, "--json", "list"]));
    assert_eq!(v["backups"].as_array().unwrap().len(), 1, "{v:#}");
    assert!(
        v["targets"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("voltar-test.invalid")),
        "{v:#}"
    );
    assert_eq!(v["targets"][1]["target"], a.as_str(), "{v:#}");
    assert!(v["targets"][1].get("error").is_none(), "{v:#}");

    let s = h.voltar(&["-c", &cfg, "show", "latest"]);
    assert_eq!(s.code, 1, "{s:?}");
    assert!(s.stdout.contains(&format!("backup {id} in {a}")), "{s:?}");
    assert!(s.all().contains("voltar-test.invalid"), "{s:?}");

    let r = h.voltar(&["-c", &cfg, "verify"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("1 object(s) checked in {a}, 0 problem(s)")),
        "{r:?}"
    );
    assert!(r.all().contains("voltar-test.invalid"), "{r:?}");

    // None readable: exit 2, for each command.
    for cmd in [&["list"][..], &["show", "latest"], &["verify"]] {
        let mut args = vec!["-c", cfg.as_str()];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&["-t", "gone"]);
        let r = h.voltar(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("voltar-test.invalid"), "{args:?}: {r:?}");
    }
}

/// Issue 10: `list -t FILE` (a file, not a directory) said "no backups" and exit 0; it is an error naming the
/// path, exit 2.
#[test]
fn issue10_a_target_that_is_a_file_is_an_error() {
    let h = Here::new();
    let file = h.path("a-file");
    std::fs::write(&file, b"not a dir").unwrap();
    let file = file.display().to_string();
    for cmd in [&["list"][..], &["show", "latest"], &["verify"]] {
        let mut args = cmd.to_vec();
        args.extend_from_slice(&["-t", &file]);
        let r = h.voltar(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(&file) && r.stderr.contains("not a directory"),
            "{args:?}: {r:?}"
        );
    }
}

/// Issue 10: each warning is printed once per run. An empty volume's warning was printed on stderr while the run
/// went and again in the summary; a skipped socket three times (the packer's log line, the run's, the
/// summary's). Two sources with the same warning share one line.
#[test]
fn issue10_each_warning_is_printed_once() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let h = Here::new();
    let t = h.target();
    let (empty1, empty2) = (c.volume("empty"), c.volume("empty"));
    let sock = c.volume("sock");
    let dir = support::mountpoint(&sock);
    std::fs::write(dir.join("f"), b"data").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(dir.join("app.sock")).unwrap();
    let b = h.voltar(&[
        "backup", "--only", &empty1, "--only", &empty2, "--only", &sock, "-t", &t,
    ]);
    assert_eq!(b.code, 0, "{b:?}");
    let all = b.all();
    assert_eq!(all.matches("source is empty").count(), 1, "{b:?}");
    assert!(
        all.contains(&format!("warning: {empty1}, {empty2}: source is empty")),
        "{b:?}"
    );
    assert_eq!(all.matches("app.sock").count(), 1, "{b:?}");
}

/// Issue 10: an error that is the same for several rows of the summary is printed once below the table; the
/// rows say "(see below)".
#[test]
fn issue10_an_error_shared_by_the_rows_is_printed_once_below_the_table() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let h = Here::new();
    let t = h.target();
    let (v1, v2) = (c.volume("shared"), c.volume("shared"));
    for v in [&v1, &v2] {
        std::fs::write(support::mountpoint(v).join("f"), b"data").unwrap();
    }
    let cfg = h.config(GONE);
    let b = h.voltar(&[
        "-c", &cfg, "backup", "--only", &v1, "--only", &v2, "-t", &t, "-t", "gone",
    ]);
    assert_eq!(b.code, 1, "{b:?}");
    let rows: Vec<&str> = b
        .stdout
        .lines()
        .filter(|l| l.starts_with(&v1) || l.starts_with(&v2))
        .collect();
    assert_eq!(rows.len(), 2, "{b:?}");
    for r in &rows {
        assert!(r.contains("(see below)"), "{r}\n{b:?}");
        assert!(!r.contains("failed its check"), "{r}\n{b:?}");
    }
    assert_eq!(
        b.stdout
            .matches("skipped: target gone failed its check")
            .count(),
        1,
        "{b:?}"
    );
    let table_end = b.stdout.find(rows[1]).unwrap();
    assert!(
        b.stdout[table_end..].contains("skipped: target gone failed its check"),
        "{b:?}"
    );
}

/// Issue 10: `restore --dry-run` lists, beside what would be removed, what would change back (size, mode, mtime,
/// type) and what would come back (missing now), leaving out what is as the backup has it; it says where the
/// safety backup goes and prints the command that undoes the restore.
#[test]
fn issue10_restore_dry_run_lists_changes_comebacks_and_the_undo() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let h = Here::new();
    let t = h.target();
    let vol = c.volume("dry");
    let mp = support::mountpoint(&vol);
    std::fs::create_dir(mp.join("d")).unwrap();
    for f in ["grown.txt", "chmod.txt", "same.txt", "d/gone.txt"] {
        std::fs::write(mp.join(f), b"as backed up\n").unwrap();
        support::chmod(&mp.join(f), 0o644);
    }
    let b = h.voltar(&["backup", "--only", &vol, "-t", &t]);
    assert_eq!(b.code, 0, "{b:?}");
    std::fs::write(mp.join("grown.txt"), b"as backed up, and more since\n").unwrap();
    support::chmod(&mp.join("chmod.txt"), 0o600);
    std::fs::remove_file(mp.join("d/gone.txt")).unwrap();
    std::fs::write(mp.join("new.txt"), b"new\n").unwrap();

    let r = h.voltar(&["restore", "latest", "--source", &vol, "-t", &t, "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = |p: &str| {
        r.stdout
            .lines()
            .find(|l| {
                l.trim_start()
                    .split_once(' ')
                    .is_some_and(|(_, rest)| rest.starts_with(p))
            })
            .unwrap_or_else(|| panic!("no line for {p}: {r:?}"))
            .trim()
            .to_string()
    };
    assert!(
        line("grown.txt").starts_with("~ grown.txt") && line("grown.txt").contains("size"),
        "{r:?}"
    );
    assert!(
        line("chmod.txt").starts_with("~ chmod.txt") && line("chmod.txt").contains("mode"),
        "{r:?}"
    );
    assert!(!line("chmod.txt").contains("size"), "{r:?}");
    assert_eq!(line("d/gone.txt"), "+ d/gone.txt", "{r:?}");
    assert_eq!(line("new.txt"), "- new.txt", "{r:?}");
    assert!(
        !r.stdout.contains("same.txt"),
        "unchanged files are not listed: {r:?}"
    );
    assert!(
        r.stdout
            .contains(&format!("safety backup of what is there now goes to {t}")),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(&format!(
            "undo: voltar restore <safety backup id> --source {vol} -t {t}"
        )),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read(mp.join("grown.txt")).unwrap(),
        b"as backed up, and more since\n"
    );

    let j = h.voltar(&[
        "--json",
        "restore",
        "latest",
        "--source",
        &vol,
        "-t",
        &t,
        "--dry-run",
    ]);
    assert_eq!(j.code, 0, "{j:?}");
    let v = json(&j);
    let s = &v["sources"][0];
    let changed: Vec<&str> = s["would-change"]
        .as_array()
        .unwrap_or_else(|| panic!("{v:#}"))
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["chmod.txt", "grown.txt"], "{v:#}");
    assert_eq!(
        s["would-come-back"],
        serde_json::json!(["d/gone.txt"]),
        "{v:#}"
    );
    assert_eq!(s["would-remove"], serde_json::json!(["new.txt"]), "{v:#}");
    assert!(
        s["undo"]
            .as_str()
            .is_some_and(|u| u.starts_with("voltar restore ")),
        "{v:#}"
    );
}

/// Issue 10: `plan` says which config file it read (or that there is none), the job's targets (a password in
/// an endpoint URL left out), encryption and retention in words; `backup --dry-run` shows each source's size as
/// `plan` does (it showed `-`).
#[test]
fn issue10_plan_shows_config_targets_encryption_retention_and_dry_run_sizes() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let h = Here::new();
    let a = h.path("a").display().to_string();
    let vol = c.volume("plan");
    std::fs::write(support::mountpoint(&vol).join("f"), vec![1u8; 3 * 1024]).unwrap();
    let cfg = h.config(&format!(
        "{}[target.offsite]\ntype = \"s3\"\nbucket = \"bk\"\nprefix = \"host1\"\n\
         endpoint = \"http://minio:topsecret@127.0.0.1:9\"\n\
         [encryption]\nrecipients = [\"age1one\", \"age1two\"]\n\
         [retention]\nkeep-last = 3\nkeep-daily = 7\nkeep-within = \"2d\"\n\
         [job.default]\ntargets = [\"a\", \"offsite\"]\n",
        local_target("a", &a)
    ));
    let p = h.voltar(&["-c", &cfg, "plan", "--only", &vol]);
    assert_eq!(p.code, 0, "{p:?}");
    for want in [
        format!("config: {cfg}"),
        format!("a: {a}"),
        "offsite: s3://bk/host1".to_string(),
        "127.0.0.1:9".to_string(),
        "encryption: 2 recipients".to_string(),
        "retention: keep the last 3, 7 daily, and all within 2d".to_string(),
    ] {
        assert!(p.stdout.contains(&want), "missing `{want}`: {p:?}");
    }
    assert!(!p.all().contains("topsecret"), "{p:?}");
    let v = json(&h.voltar(&["-c", &cfg, "--json", "plan", "--only", &vol]));
    assert_eq!(v["config"], cfg.as_str(), "{v:#}");
    assert_eq!(v["targets"][1]["name"], "offsite", "{v:#}");
    assert_eq!(v["encryption"]["recipients"], 2, "{v:#}");
    assert!(!v.to_string().contains("topsecret"), "{v:#}");

    let p = h.voltar(&["plan", "--only", &vol, "--no-size"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert!(
        p.stdout.contains("config: none found: built-in defaults"),
        "{p:?}"
    );
    assert!(p.stdout.contains("encryption: off"), "{p:?}");

    let d = h.voltar(&["backup", "--dry-run", "--only", &vol, "-t", &a]);
    assert_eq!(d.code, 0, "{d:?}");
    let row = d
        .stdout
        .lines()
        .find(|l| l.starts_with(&vol))
        .unwrap_or_else(|| panic!("{d:?}"));
    assert!(row.contains("3.0 KiB"), "{row}\n{d:?}");
}

/// Issue 10: an anonymous volume (64 hex digits) says which container uses it, in `plan` and in the `backup`
/// summary: `3f2a5b6c7d8e… (anonymous, used by web)`.
#[test]
fn issue10_anonymous_volumes_name_their_container() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let h = Here::new();
    let t = h.target();
    let web = c.run("anon-web", &["-v", "/data"]);
    let anon = support::docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", &web]);
    c.volumes.push(anon.clone());
    assert_eq!(anon.len(), 64, "{anon}");
    let shown = format!("{}… (anonymous, used by {web})", &anon[..12]);

    let p = h.voltar(&["plan", "--no-size"]);
    assert_eq!(p.code, 0, "{p:?}");
    let row = p
        .stdout
        .lines()
        .find(|l| l.contains(&anon[..12]))
        .unwrap_or_else(|| panic!("{p:?}"));
    assert!(row.starts_with(&shown), "{row}\n{p:?}");
    assert!(row.contains("anonymous volume"), "the skip reason: {row}");

    let b = h.voltar(&["backup", "--only", &anon, "-t", &t]);
    assert_eq!(b.code, 0, "{b:?}");
    assert!(
        b.stdout.lines().any(|l| l.starts_with(&shown)),
        "{shown}\n{b:?}"
    );
}

/// Issue 10: run in a container, voltar leaves that container's own mounts out of the plan (its bind mounts:
/// docker.sock, the volumes directory, the config, the state dir; its volumes), saying so once. The container is
/// named through the hidden `VOLTAR_SELF_CONTAINER` (what the detection finds from `/.dockerenv`, the hostname
/// and `/proc/self/mountinfo` inside a container).
#[test]
fn issue10_own_mounts_are_left_out_in_a_container() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let h = Here::new();
    let bind = h.path("state-dir");
    std::fs::create_dir(&bind).unwrap();
    let bind = bind.display().to_string();
    let own_vol = c.volume("own");
    let app_vol = c.volume("app");
    let me = c.run(
        "voltar-self",
        &[
            "-v",
            &format!("{bind}:/state"),
            "-v",
            &format!("{own_vol}:/config"),
        ],
    );
    let _app = c.run(
        "app",
        &[
            "-v",
            &format!("{app_vol}:/data"),
            "-v",
            &format!("{own_vol}:/shared"),
        ],
    );

    let plain = h.voltar(&["--json", "plan", "--no-size"]).stdout;
    assert!(
        plain.contains(&own_vol) && plain.contains(&bind),
        "without it: {plain}"
    );

    let run = |args: &[&str]| -> Out {
        std::process::Command::new(env!("CARGO_BIN_EXE_voltar"))
            .args(args)
            .current_dir(h.path("cwd"))
            .env("VOLTAR_STATE_DIR", h.path("state"))
            .env("VOLTAR_SELF_CONTAINER", &me)
            .env_remove("VOLTAR_CONFIG")
            .output()
            .unwrap()
            .into()
    };
    let p = run(&["plan", "--no-size"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert_eq!(
        p.all()
            .matches(&format!(
                "running in container {me}: its own mounts are not backed up"
            ))
            .count(),
        1,
        "{p:?}"
    );
    assert!(!p.stdout.contains(&own_vol), "{p:?}");
    assert!(!p.stdout.contains(&bind), "{p:?}");
    assert!(p.stdout.contains(&app_vol), "{p:?}");
    let j = run(&["--json", "plan", "--no-size"]);
    let v = json(&j);
    assert_eq!(v["running-in"], me.as_str(), "{v:#}");
    assert!(
        !j.stdout.contains(&own_vol) && !j.stdout.contains(&bind),
        "{v:#}"
    );
}

/// Issue 15: a manifest's `host` names the node the run works for when the run knows it (`VOLTAR_NODE`, or the
/// engine's name behind `{node}`): in a container, the machine's own host name is the container's id. Without
/// either, it is this machine's host name.
#[test]
fn the_manifest_host_is_the_node_when_the_run_knows_it() {
    crate::require_docker!();
    let h = Here::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hostname");
    std::fs::write(support::mountpoint(&vol).join("f"), b"x").unwrap();
    let backups = h.path("backups");
    let cfg = h.config(&format!(
        "[target.nodes]\ntype = \"local\"\npath = \"{}\"\nprefix = \"n/{{node}}\"\n",
        backups.display()
    ));
    let run = |args: &[&str]| -> Out {
        std::process::Command::new(env!("CARGO_BIN_EXE_voltar"))
            .args(["-c", &cfg])
            .args(args)
            .current_dir(h.path("cwd"))
            .env("VOLTAR_STATE_DIR", h.path("state"))
            .env("VOLTAR_NODE", "node-x")
            .env_remove("VOLTAR_CONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run voltar")
            .into()
    };
    let b = run(&["--json", "backup", "--only", &vol]);
    assert_eq!(b.code, 0, "{b:?}");
    let s = run(&["--json", "show", "latest"]);
    assert_eq!(s.code, 0, "{s:?}");
    assert_eq!(json(&s)["host"], "node-x", "{s:?}");
    assert!(backups.join("n/node-x").is_dir());

    // Without a node: this machine's host name.
    let t = h.target();
    let b = h.voltar(&["--json", "backup", "--only", &vol, "-t", &t]);
    assert_eq!(b.code, 0, "{b:?}");
    let s = h.voltar(&["--json", "show", "latest", "-t", &t]);
    let me = uname_n();
    assert_eq!(json(&s)["host"], me.as_str(), "{s:?}");
}

/// This machine's host name, as `uname -n` prints it.
fn uname_n() -> String {
    let o = std::process::Command::new("uname")
        .arg("-n")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
