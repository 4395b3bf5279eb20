//! `--wait [DURATION]`: a backup, restore or prune that finds another voltar run holding its target waits for it
//! (nothing stopped or paused meanwhile) instead of failing; without `--wait` it fails at once as before.
//!
//! The first run is a real `voltar backup` held in its pre-backup hook until the test lets it go (the hook waits
//! for a file to appear in the volume), so the test decides when the first run ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::require_docker;
use crate::support::{self, docker, mountpoint, state, unique, Cleanup, IMAGE};

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

struct Env {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    cwd: PathBuf,
    target: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path().join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        Env {
            state: tmp.path().join("state"),
            target: tmp.path().join("backups"),
            cwd,
            _tmp: tmp,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(&self.cwd)
            .env("VOLTAR_STATE_DIR", &self.state)
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run voltar")
    }

    fn spawn(&self, args: &[&str]) -> Proc {
        Proc(
            self.cmd(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn target_str(&self) -> String {
        self.target.display().to_string()
    }
}

/// A spawned voltar, killed when dropped (a failing test must not leave it running).
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child by pid.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, sig) }, 0);
    }
    fn exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }
    /// Wait for the exit (at most `timeout`): exit code, stdout, stderr. (voltar says little: the pipes do not
    /// fill up while it runs.)
    fn finish(mut self, timeout: Duration) -> (i32, String, String) {
        use std::io::Read;
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                break st;
            }
            assert!(
                start.elapsed() < timeout,
                "voltar did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(mut o) = self.0.stdout.take() {
            o.read_to_string(&mut out).unwrap();
        }
        if let Some(mut e) = self.0.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        (status.code().unwrap_or(-1), out, err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running container named after `tag` with `extra` docker-run arguments.
fn idle(c: &mut Cleanup, tag: &str, extra: &[&str]) -> String {
    let name = unique(tag);
    let mut args = vec!["run", "-d", "--name", name.as_str()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done",
    ]);
    docker(&args);
    c.containers.push(name.clone());
    name
}

/// The manifest files in a local target.
fn manifests(target: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(target) else {
        return vec![];
    };
    rd.flatten()
        .map(|e| e.path().join("manifest.json"))
        .filter(|m| m.exists())
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first run holds the target in its pre-backup hook until `release` is created in its volume.
struct Holding {
    first: Proc,
    release: PathBuf,
    /// The second run's volume and its container (paused when it is backed up).
    other: String,
    other_ctr: String,
}

fn hold_target(c: &mut Cleanup, env: &Env) -> Holding {
    let held = c.volume("held");
    std::fs::write(mountpoint(&held).join("data"), b"first").unwrap();
    let hook = "while [ ! -e /data/go ]; do sleep 0.1; done";
    idle(
        c,
        "heldctr",
        &[
            "--label",
            "voltar.quiesce=pause",
            "--label",
            &format!("voltar.pre-backup={hook}"),
            "--label",
            "voltar.hook-timeout=5m",
            "-v",
            &format!("{held}:/data"),
        ],
    );
    let other = c.volume("other");
    std::fs::write(mountpoint(&other).join("data"), b"second").unwrap();
    let other_ctr = idle(
        c,
        "otherctr",
        &[
            "--label",
            "voltar.quiesce=pause",
            "-v",
            &format!("{other}:/data"),
        ],
    );
    let mut first = env.spawn(&["backup", "--only", &held, "-t", &env.target_str()]);
    // The lock file appears when the first run has taken its target (before its hook runs).
    let locks = env.state.join("locks");
    wait_until(
        "the first run to lock its target",
        Duration::from_secs(60),
        || {
            assert!(!first.exited(), "the first run ended early");
            std::fs::read_dir(&locks)
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("target-"))
                })
                .unwrap_or(false)
        },
    );
    Holding {
        first,
        release: mountpoint(&held).join("go"),
        other,
        other_ctr,
    }
}

/// Without `--wait` a run on a busy target fails at once, as before; `--wait 2s` waits, then fails with the same
/// exit code and says it waited; SIGTERM while waiting exits cleanly. Nothing of the second run's is paused.
#[test]
fn wait_times_out_with_the_busy_exit_code_and_a_signal_ends_it_cleanly() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let h = hold_target(&mut c, &env);
    let (events, seen) = support::stream_events(&[&h.other_ctr]);
    let mut events = KillOnDrop(events);
    let pid = format!("pid {}", h.first.pid());
    let t = env.target_str();

    let t0 = Instant::now();
    let now = env.run(&["backup", "--only", &h.other, "-t", &t]);
    assert_eq!(code(&now), 2, "{}", stderr(&now));
    assert!(
        stderr(&now).contains("another voltar run") && stderr(&now).contains(&pid),
        "{}",
        stderr(&now)
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "fails at once");

    let t0 = Instant::now();
    let timed = env.run(&["backup", "--only", &h.other, "-t", &t, "--wait", "2s"]);
    let took = t0.elapsed();
    let err = stderr(&timed);
    assert_eq!(code(&timed), 2, "the exit code of a busy target:\n{err}");
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        err.contains(&pid) && err.contains("after waiting 2s") && err.contains("--wait"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // SIGTERM while waiting: exit 143 at once, nothing committed.
    let mut waiting = env.spawn(&[
        "-v", "backup", "--only", &h.other, "-t", &t, "--wait", "10m",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!waiting.exited(), "still waiting");
    let t0 = Instant::now();
    waiting.signal(libc::SIGTERM);
    let (rc, _, err) = waiting.finish(Duration::from_secs(20));
    assert_eq!(rc, 143, "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        err.contains(&format!("waiting for voltar run ({pid}) on target")),
        "says whom it waits for:\n{err}"
    );
    assert!(err.contains("interrupted"), "{err}");

    // Let the first run finish: it commits alone, and no run of ours ever paused the other container.
    std::fs::write(&h.release, b"").unwrap();
    let (rc, _, err) = h.first.finish(Duration::from_secs(120));
    assert_eq!(rc, 0, "{err}");
    assert_eq!(manifests(&env.target).len(), 1);
    assert_eq!(state(&h.other_ctr), "running");
    // A marker event on the watched container flushes the stream: everything before it is in.
    docker(&["kill", "-s", "WINCH", &h.other_ctr]);
    wait_until("the marker event", Duration::from_secs(20), || {
        seen.lock().unwrap().iter().any(|e| e.action == "kill")
    });
    let pauses: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.action == "pause")
        .cloned()
        .collect();
    assert!(pauses.is_empty(), "paused while waiting: {pauses:?}");
    events.0.kill().ok();
}

/// The second run with `--wait` (no duration: the default) starts when the first one has ended: its container is
/// paused only after the first run committed, and it commits a backup of its own.
#[test]
fn a_second_run_with_wait_runs_after_the_first_and_pauses_nothing_before() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let h = hold_target(&mut c, &env);
    let (events, seen) = support::stream_events(&[&h.other_ctr]);
    let _events = KillOnDrop(events);
    let t = env.target_str();

    let mut second = env.spawn(&["backup", "--only", &h.other, "-t", &t, "--json", "--wait"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!second.exited(), "the second run waits");
    assert_eq!(state(&h.other_ctr), "running");
    assert!(manifests(&env.target).is_empty());

    std::fs::write(&h.release, b"").unwrap();
    let (rc, _, err) = h.first.finish(Duration::from_secs(120));
    assert_eq!(rc, 0, "{err}");
    let first_done = std::fs::metadata(&manifests(&env.target)[0])
        .unwrap()
        .modified()
        .unwrap();

    let (rc, out, err) = second.finish(Duration::from_secs(120));
    assert_eq!(rc, 0, "{err}\n{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["sources"][0]["name"], h.other.as_str(), "{out}");
    assert_eq!(manifests(&env.target).len(), 2);

    wait_until(
        "the second run's pause event",
        Duration::from_secs(20),
        || seen.lock().unwrap().iter().any(|e| e.action == "unpause"),
    );
    let pause = seen
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.action == "pause")
        .cloned()
        .expect("the second run paused its container");
    let done = first_done
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    assert!(
        pause.nanos >= done,
        "paused {} ns before the first run committed",
        done - pause.nanos
    );
}

/// `restore` and `prune` take `--wait` too: a prune on a busy target waits, and goes ahead once it is free.
#[test]
fn prune_with_wait_goes_ahead_once_the_target_is_free() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let h = hold_target(&mut c, &env);
    let t = env.target_str();
    let now = env.run(&["prune", "--keep-last", "1", "-t", &t]);
    assert_eq!(code(&now), 2, "{}", stderr(&now));
    let timed = env.run(&["prune", "--keep-last", "1", "-t", &t, "--wait", "1s"]);
    assert_eq!(code(&timed), 2, "{}", stderr(&timed));
    assert!(
        stderr(&timed).contains("after waiting 1s"),
        "{}",
        stderr(&timed)
    );

    let mut prune = env.spawn(&["prune", "--keep-last", "1", "-t", &t, "--wait", "5m"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!prune.exited(), "prune waits");
    std::fs::write(&h.release, b"").unwrap();
    let (rc, _, err) = h.first.finish(Duration::from_secs(120));
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = prune.finish(Duration::from_secs(60));
    assert_eq!(rc, 0, "{err}\n{out}");
    assert_eq!(manifests(&env.target).len(), 1, "the only backup is kept");
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A restore whose safety backup goes to a target another run holds: without `--wait` its source fails before
/// anything is stopped (exit 1, as before); `--wait 1s` waits, then fails the same way, saying it waited; with
/// `--wait` it restores once the first run is done, and its container was not stopped before that.
#[test]
fn a_restore_with_wait_runs_after_the_first_run() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let t = env.target_str();
    let vol = c.volume("rst");
    let data = mountpoint(&vol).join("data");
    std::fs::write(&data, b"backed up").unwrap();
    let user = idle(&mut c, "rstuser", &["-v", &format!("{vol}:/data")]);
    let o = env.run(&["backup", "--only", &vol, "-t", &t]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    std::fs::write(&data, b"changed").unwrap();

    let h = hold_target(&mut c, &env);
    let (events, seen) = support::stream_events(&[&user]);
    let _events = KillOnDrop(events);
    let restore = |extra: &[&str]| {
        let mut a = vec![
            "restore",
            "latest",
            "--source",
            vol.as_str(),
            "-t",
            t.as_str(),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = restore(&[]);
    let now = env.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code(&now), 1, "{}", String::from_utf8_lossy(&now.stdout));
    let args = restore(&["--wait", "1s"]);
    let timed = env.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&timed.stdout),
        stderr(&timed)
    );
    assert_eq!(code(&timed), 1, "{said}");
    assert!(said.contains("after waiting 1s"), "{said}");
    assert_eq!(
        std::fs::read(&data).unwrap(),
        b"changed",
        "nothing restored"
    );

    let args = restore(&["--wait"]);
    let mut waiting = env.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_secs(2));
    assert!(!waiting.exited(), "the restore waits");
    assert_eq!(state(&user), "running");
    std::fs::write(&h.release, b"").unwrap();
    let (rc, _, err) = h.first.finish(Duration::from_secs(120));
    assert_eq!(rc, 0, "{err}");
    let first_done = manifests(&env.target)
        .iter()
        .map(|m| std::fs::metadata(m).unwrap().modified().unwrap())
        .max()
        .unwrap();
    let (rc, out, err) = waiting.finish(Duration::from_secs(120));
    assert_eq!(rc, 0, "{err}\n{out}");
    assert_eq!(std::fs::read(&data).unwrap(), b"backed up");
    wait_until("the restore's stop event", Duration::from_secs(20), || {
        seen.lock().unwrap().iter().any(|e| e.action == "start")
    });
    let done = first_done
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    let stops: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.action == "kill" || e.action == "stop" || e.action == "die")
        .cloned()
        .collect();
    assert!(!stops.is_empty(), "the restore stopped its user");
    assert!(
        stops.iter().all(|e| e.nanos >= done),
        "stopped before the first run committed: {stops:?}"
    );
}

/// With two targets, one held by another run: when `--wait` runs out, the busy target fails alone (as it does
/// without `--wait`) and the other one takes the backup (exit 1), instead of the whole run failing.
#[test]
fn a_wait_that_runs_out_fails_only_the_busy_target() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let h = hold_target(&mut c, &env);
    let t = env.target_str();
    let free = env.target.with_file_name("free");
    let f = free.display().to_string();
    let o = env.run(&[
        "backup", "--only", &h.other, "-t", &t, "-t", &f, "--wait", "1s", "--json",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(code(&o), 1, "{out}\n{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let busy = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["committed"] == false)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        busy["error"]
            .as_str()
            .is_some_and(|e| e.contains("after waiting 1s")),
        "{out}"
    );
    assert_eq!(manifests(&free).len(), 1, "{out}");
    assert!(manifests(&env.target).is_empty(), "{out}");
    std::fs::write(&h.release, b"").unwrap();
    let (rc, _, err) = h.first.finish(Duration::from_secs(120));
    assert_eq!(rc, 0, "{err}");
}
