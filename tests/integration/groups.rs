//! Quiesce groups (issue 13): the volumes of one group (`voltar.group=NAME`, or the compose project with
//! `[quiesce] group-by-project = true`) are read inside one quiesce window: each container of the group is paused
//! once for all of them, and every pause comes before every unpause. Observed on a real engine through
//! `docker events` (`frozen::Watch`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::frozen::Watch;
use crate::require_docker;
use crate::support::{self, source, Cleanup, Ev, Out};

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

/// A state dir, a target and a config file of a test's own.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new(config: &str) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("voltar.toml"), config).unwrap();
        Env { tmp }
    }

    fn target(&self) -> PathBuf {
        self.tmp.path().join("backups")
    }

    fn run(&self, args: &[&str]) -> Out {
        let config = self.tmp.path().join("voltar.toml");
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .current_dir(self.tmp.path())
            .env("VOLTAR_STATE_DIR", self.tmp.path().join("state"))
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run voltar")
            .into()
    }

    /// `backup --json` of `volumes` to the local target.
    fn backup(&self, volumes: &[&str]) -> Out {
        let t = self.target().to_string_lossy().into_owned();
        let mut args = vec!["backup", "--json", "-t", t.as_str()];
        for v in volumes {
            args.extend_from_slice(&["--only", v]);
        }
        self.run(&args)
    }
}

#[track_caller]
fn json(o: &Out) -> Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {o:?}"))
}

fn actions(evs: &[Ev]) -> Vec<&str> {
    evs.iter().map(|e| e.action.as_str()).collect()
}

/// Every pause of `evs` (of all containers together) came before every unpause: one window.
#[track_caller]
fn one_window(evs: &[Ev]) {
    let last_pause = evs
        .iter()
        .filter(|e| e.action == "pause")
        .map(|e| e.nanos)
        .max();
    let first_unpause = evs
        .iter()
        .filter(|e| e.action == "unpause")
        .map(|e| e.nanos)
        .min();
    assert!(
        matches!((last_pause, first_unpause), (Some(p), Some(u)) if p < u),
        "not one window: {evs:?}"
    );
}

/// Two volumes used by two containers of one compose project (labels set by hand, as compose sets them).
fn project(c: &mut Cleanup, extra: &[&str]) -> (String, String, String, String) {
    let proj = support::unique("grp");
    let (v1, v2) = (c.volume("grp-a"), c.volume("grp-b"));
    let mounts = [format!("{v1}:/a"), format!("{v2}:/b")];
    let label = format!("com.docker.compose.project={proj}");
    let mut ctr = |service: &str| {
        let svc = format!("com.docker.compose.service={service}");
        let mut args = vec![
            "-v",
            &mounts[0],
            "-v",
            &mounts[1],
            "--label",
            &label,
            "--label",
            &svc,
            "--label",
            "voltar.quiesce=pause",
        ];
        args.extend_from_slice(extra);
        c.run(&format!("grp-{service}"), &args)
    };
    let db = ctr("db");
    let app = ctr("app");
    (v1, v2, db, app)
}

/// Issue 13: with `group-by-project = true` each container of the project is paused exactly once for both of
/// its volumes, every pause before every unpause; without it, once per volume.
#[test]
fn group_by_project_pauses_each_container_once_for_all_its_volumes() {
    require_docker!();
    let mut c = Cleanup::default();
    let (v1, v2, db, app) = project(&mut c, &[]);

    let grouped = Env::new("[quiesce]\ngroup-by-project = true\n");
    let watch = Watch::start(&[&db, &app]);
    let o = grouped.backup(&[&v1, &v2]);
    assert_eq!(o.code, 0, "{o:?}");
    let (on_db, on_app) = (watch.touched(&db), watch.touched(&app));
    assert_eq!(actions(&on_db), ["pause", "unpause"], "{o:?}");
    assert_eq!(actions(&on_app), ["pause", "unpause"], "{o:?}");
    one_window(&[on_db, on_app].concat());
    let report = json(&o);
    for v in [&v1, &v2] {
        let s = source(&report, v);
        assert_eq!(s["status"], "ok", "{s:#}");
        // Each volume is its own archive, and names both containers with the window's pause.
        assert_eq!(s["containers"].as_array().map(Vec::len), Some(2), "{s:#}");
        for ctr in s["containers"].as_array().unwrap() {
            assert_eq!(ctr["action"], "pause", "{s:#}");
        }
        assert!(grouped
            .target()
            .join(report["id"].as_str().unwrap())
            .join(format!("{v}.tar.zst"))
            .exists());
    }
    assert_eq!(support::state(&db), "running");
    assert_eq!(support::state(&app), "running");

    let apart = Env::new("");
    let watch = Watch::start(&[&db, &app]);
    let o = apart.backup(&[&v1, &v2]);
    assert_eq!(o.code, 0, "{o:?}");
    let per_volume = ["pause", "unpause", "pause", "unpause"];
    assert_eq!(actions(&watch.touched(&db)), per_volume, "{o:?}");
    assert_eq!(actions(&watch.touched(&app)), per_volume, "{o:?}");
}

/// Issue 13: `voltar.group` groups containers of any project (or none); `voltar plan` shows the group, in text
/// and `--json`.
#[test]
fn voltar_group_label_is_one_window_and_plan_shows_it() {
    require_docker!();
    let mut c = Cleanup::default();
    let group = support::unique("g");
    let label = format!("voltar.group={group}");
    let (v1, v2) = (c.volume("grl-a"), c.volume("grl-b"));
    let m1 = format!("{v1}:/data");
    let m2 = format!("{v2}:/data");
    let a = c.run(
        "grl-a",
        &[
            "-v",
            &m1,
            "--label",
            &label,
            "--label",
            "voltar.quiesce=pause",
        ],
    );
    let b = c.run(
        "grl-b",
        &[
            "-v",
            &m2,
            "--label",
            &label,
            "--label",
            "voltar.quiesce=pause",
        ],
    );
    let env = Env::new("");

    let o = env.run(&["plan", "--no-size", "--only", &v1, "--only", &v2]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout.contains(&format!(
            "group {group}: {v1}, {v2} read in one quiesce window (label voltar.group)"
        )),
        "{o:?}"
    );
    let o = env.run(&["plan", "--json", "--no-size", "--only", &v1, "--only", &v2]);
    let plan = json(&o);
    assert_eq!(plan["groups"][0]["name"], group.as_str(), "{plan:#}");
    assert_eq!(plan["groups"][0]["sources"], serde_json::json!([v1, v2]));

    let watch = Watch::start(&[&a, &b]);
    let o = env.backup(&[&v1, &v2]);
    assert_eq!(o.code, 0, "{o:?}");
    let (on_a, on_b) = (watch.touched(&a), watch.touched(&b));
    assert_eq!(actions(&on_a), ["pause", "unpause"], "{o:?}");
    assert_eq!(actions(&on_b), ["pause", "unpause"], "{o:?}");
    one_window(&[on_a, on_b].concat());
}

/// Issue 13: a failing pre-backup hook (`hook-on-error = fail`) of a group's container fails the whole group
/// before anything is held; the post hooks still run.
#[test]
fn a_failing_pre_hook_fails_the_whole_group_before_anything_is_held() {
    require_docker!();
    let mut c = Cleanup::default();
    let (v1, v2, db, app) = project(&mut c, &["--label", "voltar.pre-backup=exit 3"]);
    let env = Env::new("[quiesce]\ngroup-by-project = true\n");
    let watch = Watch::start(&[&db, &app]);
    let o = env.backup(&[&v1, &v2]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(actions(&watch.touched(&db)).is_empty(), "{o:?}");
    assert!(actions(&watch.touched(&app)).is_empty(), "{o:?}");
    let report = json(&o);
    for v in [&v1, &v2] {
        let s = source(&report, v);
        assert_eq!(s["status"], "failed", "{s:#}");
        let err = s["error"].as_str().unwrap_or_default();
        assert!(
            err.contains("exit code 3") && err.contains("none of its sources was read"),
            "{s:#}"
        );
    }
}

/// Issue 13: `max-downtime` caps the whole window: the source being read when it is reached fails, the ones not
/// read yet fail without being read, and every container is resumed (paused once).
#[test]
fn max_downtime_caps_the_whole_window() {
    require_docker!();
    let mut c = Cleanup::default();
    let (v1, v2, db, app) = project(&mut c, &[]);
    // Enough incompressible data that reading it takes longer than the cap.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(support::mountpoint(&v1).join("big"), data).unwrap();
    let env = Env::new("[quiesce]\ngroup-by-project = true\nmax-downtime = \"1ms\"\n");
    let watch = Watch::start(&[&db, &app]);
    let o = env.backup(&[&v1, &v2]);
    assert_eq!(o.code, 1, "{o:?}");
    assert_eq!(actions(&watch.touched(&db)), ["pause", "unpause"], "{o:?}");
    assert_eq!(actions(&watch.touched(&app)), ["pause", "unpause"], "{o:?}");
    let report = json(&o);
    let first = source(&report, &v1);
    assert_eq!(first["status"], "failed", "{first:#}");
    assert!(
        first["error"]
            .as_str()
            .unwrap_or_default()
            .contains("max-downtime"),
        "{first:#}"
    );
    let second = source(&report, &v2);
    assert_eq!(second["status"], "failed", "{second:#}");
    assert!(
        second["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("not read: the group"),
        "{second:#}"
    );
    assert_eq!(support::state(&db), "running");
    assert_eq!(support::state(&app), "running");
}
