//! Exec hooks against the real Docker Engine (issue 13, "Exec hooks"; acceptance rows 1, 6, 16, 18, 26, 27):
//! the exec primitive (capture, stream, exit code, timeout that kills), container pre/post-backup hooks through
//! the `voltar` binary, offen/docker-volume-backup labels, and host hooks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use voltar::docker::{Engine, ExecEnd, ExecSpec, ExecStdout, Killed};

use crate::require_docker;
use crate::support::{self, docker, source, Cleanup, Out};

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

async fn engine() -> Engine {
    Engine::connect(None)
        .await
        .expect("connect to the docker engine")
}

fn spec(argv: &[&str], timeout: Duration) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        user: None,
        env: vec![],
        timeout,
    }
}

/// The command lines of the processes running in `container` (from the host's view, `docker top`).
fn processes(container: &str) -> Vec<String> {
    docker(&["top", container, "-o", "pid,args"])
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect()
}

// ------------------------------------------------------------------------------------------------------------
// The exec primitive

#[tokio::test]
async fn exec_captures_output_and_exit_code() {
    require_docker!();
    let mut c = Cleanup::default();
    let ctr = c.run("exec", &[]);
    let engine = engine().await;
    let cancel = CancellationToken::new();
    let mut s = spec(
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; echo \"$GREETING\"; exit 3",
        ],
        Duration::from_secs(30),
    );
    s.env = vec!["GREETING=hello".into()];
    let o = engine
        .exec(&ctr, &s, ExecStdout::Capture, &cancel)
        .await
        .unwrap();
    assert_eq!(o.end, ExecEnd::Exited);
    assert_eq!(o.exit_code, Some(3));
    assert!(!o.success());
    assert_eq!(o.stdout.text(), "out\nhello");
    assert_eq!(o.stderr.text(), "err");

    // Output beyond the cap is cut and said to be.
    let o = engine
        .exec(
            &ctr,
            &spec(
                &["sh", "-c", "yes x | head -c 100000"],
                Duration::from_secs(30),
            ),
            ExecStdout::Capture,
            &cancel,
        )
        .await
        .unwrap();
    assert!(o.success(), "{o:?}");
    assert_eq!(o.stdout.bytes.len(), voltar::docker::exec::CAPTURE_CAP);
    assert!(o.stdout.text().ends_with("bytes truncated"));

    // A user: busybox `id -u` as nobody.
    let mut s = spec(&["id", "-u"], Duration::from_secs(30));
    s.user = Some("65534".into());
    let o = engine
        .exec(&ctr, &s, ExecStdout::Capture, &cancel)
        .await
        .unwrap();
    assert_eq!(o.stdout.text(), "65534");
}

#[tokio::test]
async fn exec_streams_stdout_into_a_channel() {
    require_docker!();
    let mut c = Cleanup::default();
    let ctr = c.run("exec", &[]);
    let engine = engine().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let collect = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(b) = rx.recv().await {
            n += b.len();
        }
        n
    });
    let o = engine
        .exec(
            &ctr,
            &spec(
                &["sh", "-c", "head -c 3000000 /dev/zero; echo done >&2"],
                Duration::from_secs(60),
            ),
            ExecStdout::Stream(tx),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(o.success(), "{o:?}");
    assert!(o.stdout.is_empty());
    assert_eq!(o.stderr.text(), "done");
    assert_eq!(collect.await.unwrap(), 3_000_000);
}

#[tokio::test]
async fn exec_past_its_timeout_is_killed_and_gone_from_the_container() {
    require_docker!();
    let mut c = Cleanup::default();
    let ctr = c.run("exec", &[]);
    let engine = engine().await;
    let started = std::time::Instant::now();
    // A shell with a child: the whole tree must go, not just the shell.
    let o = engine
        .exec(
            &ctr,
            &spec(
                &["sh", "-c", "sleep 600 & sleep 601; echo never"],
                Duration::from_secs(2),
            ),
            ExecStdout::Capture,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        matches!(o.end, ExecEnd::TimedOut(Killed::Killed(n)) if n >= 2),
        "{o:?}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(!o.success());
    let left: Vec<String> = processes(&ctr)
        .into_iter()
        .filter(|p| p.contains("sleep 60"))
        .collect();
    assert!(left.is_empty(), "still running in {ctr}: {left:?}");
    assert_eq!(support::state(&ctr), "running");
}

// ------------------------------------------------------------------------------------------------------------
// Container hooks through the binary

/// Per-test surroundings: a state dir, a working dir without config files, a backup dir.
struct Env {
    tmp: tempfile::TempDir,
    state: PathBuf,
    cwd: PathBuf,
    target: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let cwd = tmp.path().join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        let target = tmp.path().join("backups");
        Env {
            state,
            cwd,
            target,
            tmp,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn config(&self, text: &str) -> String {
        let p = self.dir().join("voltar.toml");
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn run(&self, args: &[&str]) -> Out {
        Command::new(BIN)
            .args(args)
            .current_dir(&self.cwd)
            .env("VOLTAR_STATE_DIR", &self.state)
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .output()
            .expect("run voltar")
            .into()
    }

    /// `backup --json` of the named volumes to the local target.
    fn backup(&self, volumes: &[&str], extra: &[&str]) -> Out {
        let t = self.target.to_string_lossy().into_owned();
        let mut args = vec!["backup", "--json", "-t", t.as_str()];
        for v in volumes {
            args.extend_from_slice(&["--only", v]);
        }
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// The one backup in the target: (id, manifest).
    fn only_manifest(&self) -> (String, Value) {
        let mut found = vec![];
        for e in std::fs::read_dir(&self.target)
            .into_iter()
            .flatten()
            .flatten()
        {
            let m = e.path().join("manifest.json");
            if m.exists() {
                let v: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
                found.push((e.file_name().to_string_lossy().into_owned(), v));
            }
        }
        assert_eq!(found.len(), 1, "one backup expected: {found:?}");
        found.pop().unwrap()
    }

    /// Member names of a stored (unencrypted) archive.
    fn archive_members(&self, id: &str, object: &str) -> Vec<String> {
        let path = self.target.join(id).join(object);
        let out = Command::new("sh")
            .args(["-c", "zstd -dc \"$1\" | tar -tf -", "sh"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_start_matches("./").to_string())
            .collect()
    }
}

#[track_caller]
fn json(o: &Out) -> Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {o:?}"))
}

#[track_caller]
fn expect_code(o: &Out, code: i32) {
    assert_eq!(o.code, code, "{o:?}");
}

/// A running container of the test image that exits promptly on SIGTERM.
fn idle(c: &mut Cleanup, tag: &str, extra: &[&str]) -> String {
    let name = support::unique(tag);
    let mut args = vec!["run", "-d", "--name", name.as_str()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        support::IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done",
    ]);
    docker(&args);
    c.containers.push(name.clone());
    name
}

/// pause/unpause/stop/start/exec_start events of `container` seen by `events` so far, in order, after waiting
/// for the stream to catch up with a marker event on `container` itself (a `WINCH` is a `kill` event).
fn lifecycle(
    events: &std::sync::Arc<std::sync::Mutex<Vec<support::Ev>>>,
    container: &str,
) -> Vec<String> {
    let kills = || {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.container == container && e.action == "kill")
            .count()
    };
    let before = kills();
    docker(&["kill", "-s", "WINCH", container]);
    let t = std::time::Instant::now();
    while kills() <= before {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "docker events stream stalled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.container == container)
        .filter(|e| {
            matches!(
                e.action.as_str(),
                "pause" | "unpause" | "stop" | "start" | "exec_start"
            )
        })
        .map(|e| e.action.clone())
        .collect()
}

#[test]
fn pre_hook_output_is_in_the_archive_and_post_hook_runs_after_resume() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hk");
    let app = idle(
        &mut c,
        "hkapp",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.quiesce=pause",
            "--label",
            "voltar.pre-backup=echo dumped > /data/dump.sql; echo pre-said-$((40+2))",
            "--label",
            "voltar.post-backup=rm /data/dump.sql",
        ],
    );
    let (mut child, events) = support::stream_events(&[&app]);
    lifecycle(&events, &app);
    let o = env.backup(&[&vol], &["-v"]);
    expect_code(&o, 0);
    let order = lifecycle(&events, &app);
    let _ = child.kill();
    let _ = child.wait();
    // Pre hook, then the pause, the resume, then the post hook (an exec into a paused container is refused).
    assert_eq!(
        order,
        ["exec_start", "pause", "unpause", "exec_start"],
        "{o:?}"
    );

    let report = json(&o);
    let s = source(&report, &vol);
    assert_eq!(s["status"], "ok");
    let hooks = s["hooks"]
        .as_array()
        .unwrap_or_else(|| panic!("no hooks in {s:#}"));
    assert_eq!(hooks.len(), 2, "{s:#}");
    assert_eq!(hooks[0]["container"], app.as_str());
    assert_eq!(hooks[0]["phase"], "pre-backup");
    assert_eq!(
        hooks[0]["command"],
        "echo dumped > /data/dump.sql; echo pre-said-$((40+2))"
    );
    assert_eq!(hooks[0]["exit-code"], 0);
    assert_eq!(hooks[0]["outcome"], "ok");
    assert!(hooks[0]["duration-ms"].is_u64());
    assert_eq!(hooks[1]["phase"], "post-backup");
    assert_eq!(hooks[1]["outcome"], "ok");
    // Output goes to the log (`-v`: a hook that succeeded logs at info), never into the report or the manifest.
    assert!(o.stderr.contains("pre-said-42"), "{o:?}");
    assert!(!o.stdout.contains("pre-said-42"));

    // The file the pre hook wrote is in the archive; the post hook removed it from the volume afterwards.
    let (id, manifest) = env.only_manifest();
    let m = source(&manifest, &vol);
    assert_eq!(m["hooks"].as_array().map(Vec::len), Some(2), "{m:#}");
    assert_eq!(m["hooks"][0]["command"], hooks[0]["command"]);
    let members = env.archive_members(&id, m["object"].as_str().unwrap());
    assert!(members.iter().any(|n| n == "dump.sql"), "{members:?}");
    assert!(!support::mountpoint(&vol).join("dump.sql").exists());
    assert_eq!(support::state(&app), "running");

    // The summary table names the hooks.
    let t = env.target.to_string_lossy().into_owned();
    let o = env.run(&["backup", "-t", &t, "--only", &vol]);
    expect_code(&o, 0);
    assert!(
        o.stdout.contains("hook: ") && o.stdout.contains("pre-backup"),
        "{o:?}"
    );
}

#[test]
fn failing_pre_hook_fails_its_source_only_and_still_runs_the_post_hook() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let bad = c.volume("hkbad");
    let good = c.volume("hkgood");
    let app = idle(
        &mut c,
        "hkfail",
        &[
            "-v",
            &format!("{bad}:/data"),
            "--label",
            "voltar.quiesce=pause",
            "--label",
            "voltar.pre-backup=echo starting; exit 7",
            "--label",
            "voltar.post-backup=touch /data/post-ran",
        ],
    );
    let other = idle(
        &mut c,
        "hkother",
        &[
            "-v",
            &format!("{good}:/data"),
            "--label",
            "voltar.quiesce=pause",
        ],
    );
    let (mut child, events) = support::stream_events(&[&app, &other]);
    lifecycle(&events, &app);
    let o = env.backup(&[&bad, &good], &[]);
    expect_code(&o, 1);
    let order = lifecycle(&events, &app);
    let _ = child.kill();
    let _ = child.wait();
    // Never paused: the pre hook failed before; the post hook still ran.
    assert_eq!(order, ["exec_start", "exec_start"], "{o:?}");
    assert_eq!(support::state(&app), "running");
    assert_eq!(support::state(&other), "running");
    assert!(support::mountpoint(&bad).join("post-ran").exists());

    let report = json(&o);
    assert_eq!(report["status"], "partial");
    let s = source(&report, &bad);
    assert_eq!(s["status"], "failed", "{s:#}");
    let err = s["error"].as_str().unwrap();
    assert!(
        err.contains("pre-backup hook") && err.contains(&app) && err.contains("exit code 7"),
        "{err}"
    );
    assert_eq!(s["hooks"][0]["outcome"], "failed");
    assert_eq!(s["hooks"][0]["exit-code"], 7);
    assert_eq!(s["hooks"][1]["phase"], "post-backup");
    assert_eq!(s["hooks"][1]["outcome"], "ok");
    assert_eq!(source(&report, &good)["status"], "ok");

    // Nothing was stored for the failed source.
    let (id, manifest) = env.only_manifest();
    let names: Vec<&str> = manifest["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [good.as_str()]);
    let stored: Vec<String> = std::fs::read_dir(env.target.join(&id))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!stored.iter().any(|n| n.starts_with(&bad)), "{stored:?}");
}

#[test]
fn failing_hook_with_continue_is_a_warning() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hkcont");
    let app = idle(
        &mut c,
        "hkcont",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.pre-backup=exit 3",
            "--label",
            "voltar.hook-on-error=continue",
        ],
    );
    let o = env.backup(&[&vol], &[]);
    expect_code(&o, 0);
    let report = json(&o);
    let s = source(&report, &vol);
    assert_eq!(s["status"], "ok");
    assert_eq!(s["hooks"][0]["outcome"], "failed");
    let warnings = s["warnings"].to_string();
    assert!(
        warnings.contains("pre-backup hook")
            && warnings.contains(&app)
            && warnings.contains("exit code 3"),
        "{warnings}"
    );
}

/// Issue 13: `voltar show` prints each source's hooks from the manifest (command, user, outcome, exit code,
/// duration), and `show --json` carries them.
#[test]
fn show_prints_each_sources_hooks_and_json_carries_them() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hkshow");
    let app = idle(
        &mut c,
        "hkshow",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.pre-backup=true",
            "--label",
            "voltar.post-backup=exit 4",
            "--label",
            "voltar.hook-user=65534",
            "--label",
            "voltar.hook-on-error=continue",
        ],
    );
    expect_code(&env.backup(&[&vol], &[]), 0);
    let t = env.target.to_string_lossy().into_owned();

    let o = env.run(&["show", "latest", "-t", &t]);
    expect_code(&o, 0);
    let lines: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| l.starts_with("hook: "))
        .collect();
    assert_eq!(lines.len(), 2, "{o:?}");
    assert!(
        lines[0].starts_with(&format!(
            "hook: {vol}: {app} pre-backup `true` as 65534: ok in "
        )),
        "{o:?}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "hook: {vol}: {app} post-backup `exit 4` as 65534: FAILED (exit code 4) in "
        )),
        "{o:?}"
    );

    let o = env.run(&["show", "latest", "-t", &t, "--json"]);
    expect_code(&o, 0);
    let doc = json(&o);
    let hooks = &source(&doc, &vol)["hooks"];
    assert_eq!(hooks[0]["phase"], "pre-backup", "{doc:#}");
    assert_eq!(hooks[0]["user"], "65534");
    assert_eq!(hooks[0]["outcome"], "ok");
    assert_eq!(hooks[0]["exit-code"], 0);
    assert!(hooks[0]["duration-ms"].is_u64());
    assert_eq!(hooks[1]["command"], "exit 4");
    assert_eq!(hooks[1]["outcome"], "failed");
    assert_eq!(hooks[1]["exit-code"], 4);
}

#[test]
fn config_hooks_by_container_name_and_a_failing_post_hook_keeps_the_backup_but_exits_1() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hkcfg");
    let app = idle(&mut c, "hkcfg", &["-v", &format!("{vol}:/data")]);
    let config = env.config(&format!(
        "[hooks.container.\"{app}\"]\npre-backup = [\"/bin/busybox\", \"touch\", \"/data/from-config\"]\npost-backup = \"exit 5\"\n"
    ));
    let o = env.backup(&[&vol], &["--config", &config]);
    expect_code(&o, 1);
    let report = json(&o);
    assert_eq!(report["status"], "partial");
    let s = source(&report, &vol);
    assert_eq!(s["status"], "partial", "{s:#}");
    let err = s["error"].as_str().unwrap();
    assert!(
        err.contains("post-backup hook")
            && err.contains("exit code 5")
            && err.contains("was stored"),
        "{err}"
    );
    assert_eq!(
        s["hooks"][0]["command"],
        r#"["/bin/busybox","touch","/data/from-config"]"#
    );
    // Stored and committed all the same, with the file the pre hook wrote.
    let (id, manifest) = env.only_manifest();
    let m = source(&manifest, &vol);
    assert!(env
        .archive_members(&id, m["object"].as_str().unwrap())
        .iter()
        .any(|n| n == "from-config"));
    assert_eq!(m["hooks"][1]["outcome"], "failed");
    assert_eq!(m["hooks"][1]["exit-code"], 5);

    // The plan says where the hooks come from.
    let o = env.run(&["plan", "--no-size", "--config", &config, "--only", &vol]);
    expect_code(&o, 0);
    assert!(
        o.stdout
            .contains(&format!("config hooks.container.\"{app}\"")),
        "{o:?}"
    );
}

#[test]
fn hanging_hook_is_killed_at_its_timeout() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hkhang");
    let app = idle(
        &mut c,
        "hkhang",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.quiesce=pause",
            "--label",
            "voltar.pre-backup=sleep 600",
            "--label",
            "voltar.hook-timeout=2s",
        ],
    );
    let started = std::time::Instant::now();
    let o = env.backup(&[&vol], &[]);
    let took = started.elapsed();
    expect_code(&o, 1);
    assert!(took < Duration::from_secs(30), "took {took:?}: {o:?}");
    let report = json(&o);
    let s = source(&report, &vol);
    assert_eq!(s["status"], "failed");
    assert_eq!(s["hooks"][0]["outcome"], "timed-out", "{s:#}");
    assert!(
        s["error"].as_str().unwrap().contains("timed out after 2s"),
        "{s:#}"
    );
    let left: Vec<String> = processes(&app)
        .into_iter()
        .filter(|p| p.contains("sleep 600"))
        .collect();
    assert!(left.is_empty(), "still running in {app}: {left:?}");
    assert_eq!(support::state(&app), "running");
}

#[test]
fn json_array_hook_runs_without_a_shell() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hkargv");
    idle(
        &mut c,
        "hkargv",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            r#"voltar.pre-backup=["/bin/busybox","touch","/data/a b;touch c"]"#,
        ],
    );
    let o = env.backup(&[&vol], &[]);
    expect_code(&o, 0);
    let data = support::mountpoint(&vol);
    // One file with that literal name: no shell split it or ran the second command.
    assert!(data.join("a b;touch c").exists(), "{o:?}");
    assert!(!data.join("c").exists() && !data.join("a").exists());
    let s = json(&o);
    assert_eq!(
        source(&s, &vol)["hooks"][0]["command"],
        r#"["/bin/busybox","touch","/data/a b;touch c"]"#
    );
}

// ------------------------------------------------------------------------------------------------------------
// offen/docker-volume-backup labels

/// What a plan says about one source, without what names it (names, ids, reasons, what decided a hook).
fn plan_shape(plan: &Value, source_name: &str) -> Value {
    let s = source(plan, source_name);
    let containers: Vec<Value> = s["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut hooks = c["hooks"].clone();
            for phase in ["pre-backup", "post-backup"] {
                if let Some(h) = hooks.get_mut(phase).and_then(Value::as_object_mut) {
                    h.remove("from");
                }
            }
            serde_json::json!({
                "state": c["state"], "rw": c["rw"], "action": c["action"],
                "stop-timeout": c["stop-timeout"], "hooks": hooks,
            })
        })
        .collect();
    serde_json::json!({"kind": s["kind"], "containers": containers})
}

#[test]
fn offen_labels_plan_like_voltar_labels_and_plan_says_which_label_decided() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let ours = c.volume("hkours");
    let theirs = c.volume("hkoffen");
    let both = c.volume("hkboth");
    let dump = "/bin/sh -c 'echo dump > /data/dump.sql'";
    let ours_ctr = idle(
        &mut c,
        "hkours",
        &[
            "-v",
            &format!("{ours}:/data"),
            "--label",
            "voltar.quiesce=stop",
            "--label",
            r#"voltar.pre-backup=["/bin/sh","-c","echo dump > /data/dump.sql"]"#,
            "--label",
            r#"voltar.post-backup=["rm","/data/dump.sql"]"#,
        ],
    );
    let offen_ctr = idle(
        &mut c,
        "hkoffen",
        &[
            "-v",
            &format!("{theirs}:/data"),
            "--label",
            "docker-volume-backup.stop-during-backup=true",
            "--label",
            &format!("docker-volume-backup.archive-pre={dump}"),
            "--label",
            "docker-volume-backup.archive-post=rm /data/dump.sql",
        ],
    );
    // Both kinds of label: voltar's win.
    let both_ctr = idle(
        &mut c,
        "hkboth",
        &[
            "-v",
            &format!("{both}:/data"),
            "--label",
            "docker-volume-backup.stop-during-backup=true",
            "--label",
            "voltar.quiesce=pause",
            "--label",
            "docker-volume-backup.archive-pre=touch /data/offen",
            "--label",
            "voltar.pre-backup=touch /data/voltar",
        ],
    );
    let o = env.run(&[
        "plan",
        "--json",
        "--no-size",
        "--only",
        &ours,
        "--only",
        &theirs,
        "--only",
        &both,
    ]);
    expect_code(&o, 0);
    let plan = json(&o);
    assert_eq!(
        plan_shape(&plan, &ours),
        plan_shape(&plan, &theirs),
        "{plan:#}"
    );
    let offen = container_of(&plan, &theirs, &offen_ctr);
    assert_eq!(offen["action"], "stop");
    assert_eq!(
        offen["reason"],
        "label docker-volume-backup.stop-during-backup"
    );
    assert_eq!(
        offen["hooks"]["pre-backup"]["from"],
        "label docker-volume-backup.archive-pre"
    );
    assert_eq!(
        offen["hooks"]["pre-backup"]["command"],
        r#"["/bin/sh","-c","echo dump > /data/dump.sql"]"#
    );
    let mine = container_of(&plan, &ours, &ours_ctr);
    assert_eq!(mine["reason"], "label voltar.quiesce");
    let b = container_of(&plan, &both, &both_ctr);
    assert_eq!(b["action"], "pause");
    assert_eq!(b["reason"], "label voltar.quiesce");
    assert_eq!(b["hooks"]["pre-backup"]["command"], "touch /data/voltar");
    assert_eq!(b["hooks"]["pre-backup"]["from"], "label voltar.pre-backup");

    // The table says it too.
    let o = env.run(&["plan", "--no-size", "--only", &theirs]);
    expect_code(&o, 0);
    assert!(
        o.stdout
            .contains("stop (label docker-volume-backup.stop-during-backup)"),
        "{o:?}"
    );
    assert!(
        o.stdout.contains("label docker-volume-backup.archive-pre"),
        "{o:?}"
    );

    // And the offen-labelled container's hooks run: the dump is in the archive.
    let o = env.backup(&[&theirs], &[]);
    expect_code(&o, 0);
    let (id, manifest) = env.only_manifest();
    let m = source(&manifest, &theirs);
    let members = env.archive_members(&id, m["object"].as_str().unwrap());
    assert!(members.iter().any(|n| n == "dump.sql"), "{members:?}");
    assert!(!support::mountpoint(&theirs).join("dump.sql").exists());
    assert_eq!(
        support::container_record(m, &offen_ctr)["action"],
        "stop",
        "{m:#}"
    );
}

#[track_caller]
fn container_of<'a>(plan: &'a Value, source_name: &str, container: &str) -> &'a Value {
    support::container_record(source(plan, source_name), container)
}

// ------------------------------------------------------------------------------------------------------------
// Host hooks

/// A host hook that writes the run's `VOLTAR_*` variables to `dir/NAME.env`.
fn dump_env(dir: &Path, name: &str) -> String {
    format!(
        "env | grep ^VOLTAR_ | sort > '{}'",
        dir.join(format!("{name}.env")).display()
    )
}

fn read_env(dir: &Path, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.env"))).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn host_hooks_see_the_run_in_their_environment() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hkhost");
    let out = env.dir().join("hooks-out");
    std::fs::create_dir_all(&out).unwrap();
    let config = env.config(&format!(
        "[hooks]\nbefore = \"{}\"\nafter = \"{}\"\non-failure = \"{}\"\ntimeout = \"30s\"\n",
        dump_env(&out, "before").replace('"', "\\\""),
        dump_env(&out, "after").replace('"', "\\\""),
        dump_env(&out, "on-failure").replace('"', "\\\""),
    ));
    let o = env.backup(&[&vol], &["--config", &config]);
    expect_code(&o, 0);
    let report = json(&o);
    let id = report["id"].as_str().unwrap();

    let before = read_env(&out, "before").unwrap_or_else(|| panic!("before did not run: {o:?}"));
    assert_eq!(before["VOLTAR_JOB"], "default");
    assert_eq!(before["VOLTAR_BACKUP_ID"], id);
    assert_eq!(before["VOLTAR_TARGETS"], env.target.to_string_lossy());
    assert!(!before.contains_key("VOLTAR_RESULT"), "{before:?}");

    let after = read_env(&out, "after").unwrap_or_else(|| panic!("after did not run: {o:?}"));
    assert_eq!(after["VOLTAR_RESULT"], "ok");
    assert_eq!(after["VOLTAR_EXIT_CODE"], "0");
    assert_eq!(after["VOLTAR_BACKUP_ID"], id);
    assert_eq!(after["VOLTAR_JOB"], "default");
    assert_eq!(after["VOLTAR_TARGETS"], env.target.to_string_lossy());
    assert!(
        read_env(&out, "on-failure").is_none(),
        "on-failure ran after a good run"
    );
    // Their output went to the log, not into --json's stdout.
    assert!(report.is_object());

    // A run that fails a source: result partial, exit code 1, on-failure runs too.
    let bad = c.volume("hkhostbad");
    idle(
        &mut c,
        "hkhostbad",
        &[
            "-v",
            &format!("{bad}:/data"),
            "--label",
            "voltar.pre-backup=exit 1",
        ],
    );
    std::fs::remove_file(out.join("after.env")).unwrap();
    let o = env.backup(&[&vol, &bad], &["--config", &config]);
    expect_code(&o, 1);
    let after = read_env(&out, "after").unwrap();
    assert_eq!(after["VOLTAR_RESULT"], "partial");
    assert_eq!(after["VOLTAR_EXIT_CODE"], "1");
    let failed =
        read_env(&out, "on-failure").unwrap_or_else(|| panic!("on-failure did not run: {o:?}"));
    assert_eq!(failed["VOLTAR_RESULT"], "partial");
}

#[test]
fn failing_before_hook_touches_no_container() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hkbefore");
    let app = idle(
        &mut c,
        "hkbefore",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.quiesce=pause",
            "--label",
            "voltar.pre-backup=touch /data/pre-ran",
        ],
    );
    let out = env.dir().join("hooks-out");
    std::fs::create_dir_all(&out).unwrap();
    let config = env.config(&format!(
        "[hooks]\nbefore = \"echo no-space-left >&2; exit 3\"\non-failure = \"{}\"\n",
        dump_env(&out, "on-failure").replace('"', "\\\""),
    ));
    let (mut child, events) = support::stream_events(&[&app]);
    lifecycle(&events, &app);
    let o = env.backup(&[&vol], &["--config", &config]);
    let seen = lifecycle(&events, &app);
    let _ = child.kill();
    let _ = child.wait();
    expect_code(&o, 2);
    assert!(seen.is_empty(), "container touched: {seen:?}");
    assert!(!support::mountpoint(&vol).join("pre-ran").exists());
    assert!(!env.target.exists() || std::fs::read_dir(&env.target).unwrap().next().is_none());
    let err = json(&o)["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("before hook")
            && err.contains("exit code 3")
            && err.contains("no container was touched"),
        "{err}"
    );
    assert!(o.stderr.contains("no-space-left"), "{o:?}");
    let failed =
        read_env(&out, "on-failure").unwrap_or_else(|| panic!("on-failure did not run: {o:?}"));
    assert_eq!(failed["VOLTAR_RESULT"], "failed");
    assert_eq!(failed["VOLTAR_EXIT_CODE"], "2");
}

// ------------------------------------------------------------------------------------------------------------
// Two runs over one container (row 27)

/// Two runs that back up the same volume at once (two jobs, two targets): the second waits for the first to be
/// done with the container — its pre hook, read and post hook — before it runs its own pre hook. Without that,
/// the first run's post hook removed the dump while the second was reading: the second backup silently missed it.
#[test]
fn two_runs_never_interleave_one_containers_hooks() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hktwo");
    idle(
        &mut c,
        "hktwo",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.pre-backup=echo dump > /data/dump.sql; sleep 2",
            "--label",
            "voltar.post-backup=rm /data/dump.sql",
        ],
    );
    let second_target = env.dir().join("backups-2");
    let spawn = |target: &Path| {
        Command::new(BIN)
            .args(["backup", "--json", "--only", &vol, "-t"])
            .arg(target)
            .current_dir(&env.cwd)
            .env("VOLTAR_STATE_DIR", &env.state)
            .env_remove("VOLTAR_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn(&env.target);
    std::thread::sleep(Duration::from_millis(500));
    let second = spawn(&second_target);
    for (child, target) in [(first, env.target.clone()), (second, second_target)] {
        let o: Out = child.wait_with_output().unwrap().into();
        expect_code(&o, 0);
        let id = json(&o)["id"].as_str().unwrap().to_string();
        let m: Value =
            serde_json::from_slice(&std::fs::read(target.join(&id).join("manifest.json")).unwrap())
                .unwrap();
        let object = source(&m, &vol)["object"].as_str().unwrap().to_string();
        let out = Command::new("sh")
            .args(["-c", "zstd -dc \"$1\" | tar -tf -", "sh"])
            .arg(target.join(&id).join(&object))
            .output()
            .unwrap();
        let members = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            members
                .lines()
                .any(|l| l.trim_start_matches("./") == "dump.sql"),
            "the backup in {} misses the dump its pre hook wrote: {members}\n{o:?}",
            target.display()
        );
    }
}

/// Issue 13: voltar SIGKILLed while a pre-backup hook runs leaves the hook's exec in its journal: `voltar recover`
/// kills the hook's process (still running in the container until then), runs the post-backup hook the pre hook
/// obliged (the "after" side undoes the "before" side), and says both; the container is as it was found.
#[test]
fn sigkill_during_a_pre_hook_is_repaired_by_recover() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("hkkill");
    let app = idle(
        &mut c,
        "hkkill",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.quiesce=pause",
            "--label",
            "voltar.pre-backup=touch /data/pre-started; exec sleep 4321",
            "--label",
            "voltar.post-backup=touch /data/post-ran",
        ],
    );
    let t = env.target.to_string_lossy().into_owned();
    let mut voltar = Command::new(BIN)
        .args(["backup", "-t", &t, "--only", &vol])
        .current_dir(&env.cwd)
        .env("VOLTAR_STATE_DIR", &env.state)
        .env_remove("VOLTAR_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hook_runs = || processes(&app).iter().any(|p| p.contains("sleep 4321"));
    let started = std::time::Instant::now();
    while !hook_runs() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the pre hook never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    voltar.kill().unwrap(); // SIGKILL: no cancel, no post hook, no journal cleanup
    voltar.wait().unwrap();
    assert!(hook_runs(), "the hook should outlive the killed run");
    assert!(!support::mountpoint(&vol).join("post-ran").exists());

    let o = env.run(&["recover"]);
    expect_code(&o, 0);
    assert!(
        o.stdout.contains(&format!(
            "pre-backup hook `touch /data/pre-started; exec sleep 4321` in container {app}: left running by an interrupted run: killed ("
        )),
        "{o:?}"
    );
    assert!(
        o.stdout.contains(&format!(
            "post-backup hook `touch /data/post-ran` owed to container {app}: run now (exit code 0)"
        )),
        "{o:?}"
    );
    assert!(!hook_runs(), "{:?}", processes(&app));
    assert!(support::mountpoint(&vol).join("post-ran").exists());
    assert_eq!(support::state(&app), "running");
    // Nothing is left for a second recover.
    let o = env.run(&["recover"]);
    expect_code(&o, 0);
    assert!(o.stdout.starts_with("nothing to recover"), "{o:?}");
}
