//! End-to-end tests of issue 2 ("voltar v0.1: discover volumes through the Docker API, back them up to local disk
//! with containers kept consistent"), through the real `voltar` binary against the real Docker Engine.
//!
//! Every test restricts its runs to its own volumes with `--only` (other tests create volumes and containers in
//! parallel on the same engine), runs with its own `VOLTAR_STATE_DIR`, in a temporary working directory and with
//! `VOLTAR_CONFIG` unset, so no stray config file is picked up.
//!
//! Container state changes are observed through a streamed `docker events` subscription (the engine's replay
//! buffer is only 256 events: with parallel tests a `--since/--until` query could miss ours).

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::tree::{self, DiffOptions};
use serde_json::Value;

use crate::require_docker;
use crate::support::{
    self, container_record, docker, mountpoint, source, state, unique, Cleanup, Ev, Tmpfs, IMAGE,
};

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

// ------------------------------------------------------------------------------------------------------------
// Helpers

/// Per-test surroundings: a state dir, a working dir without config files, a backup dir.
struct Env {
    _tmp: tempfile::TempDir,
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
            _tmp: tmp,
        }
    }

    fn dir(&self) -> &Path {
        self._tmp.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(&self.cwd)
            .env("VOLTAR_STATE_DIR", &self.state)
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = self.cmd(args).output().expect("run voltar");
        Run::from(args, out)
    }

    /// Write a config file into the temp dir and return its path.
    fn config(&self, name: &str, text: &str) -> String {
        let p = self.dir().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn target_str(&self) -> String {
        self.target.to_string_lossy().into_owned()
    }

    fn journal_files(&self) -> Vec<String> {
        std::fs::read_dir(voltar::quiesce::journal_dir(&self.state))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A finished voltar run.
struct Run {
    args: String,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(args: &[&str], out: Output) -> Run {
        Run {
            args: args.join(" "),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "voltar {} exited {} (expected {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.code, self.stdout, self.stderr
        );
        // Not a terminal: no colour codes in cron mails and logs.
        assert!(
            !self.stdout.contains('\x1b') && !self.stderr.contains('\x1b'),
            "escape codes in output:\n{:?}",
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "voltar {}: stdout is not JSON ({e}):\n{}\n--- stderr\n{}",
                self.args, self.stdout, self.stderr
            )
        })
    }

    /// A fatal error: one clear line on stderr, no panic, no backtrace, no library debug noise.
    #[track_caller]
    fn expect_clean_error(&self) -> &Run {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "one error line expected:\n{}", self.stderr);
        assert!(lines[0].starts_with("voltar: error: "), "{}", self.stderr);
        for noise in [
            "panicked",
            "backtrace",
            "RUST_BACKTRACE",
            "Error {",
            "Os {",
            "kind:",
        ] {
            assert!(
                !self.stderr.contains(noise),
                "noise `{noise}`:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// Start a long-running container of the test image running `script` under `sh -c` (exits promptly on
/// SIGTERM, so `stop` does not wait out its grace period).
fn run_sh(c: &mut Cleanup, tag: &str, extra: &[&str], script: &str) -> String {
    let name = unique(tag);
    let mut args = vec!["run", "-d", "--name", name.as_str()];
    args.extend_from_slice(extra);
    let full = format!("trap 'exit 0' TERM; {script}; while :; do sleep 1 & wait $!; done");
    args.extend_from_slice(&[IMAGE, "sh", "-c", full.as_str()]);
    docker(&args);
    c.containers.push(name.clone());
    name
}

/// A running container that mounts `mounts` and does nothing.
fn idle(c: &mut Cleanup, tag: &str, extra: &[&str]) -> String {
    run_sh(c, tag, extra, "true")
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A streamed `docker events` subscription for some containers, collected in the background.
struct Events {
    child: Child,
    seen: Arc<Mutex<Vec<Ev>>>,
    /// Running container used to flush the stream (`docker kill -s WINCH` makes a `kill` event).
    flusher: String,
}

impl Events {
    fn watch(containers: &[&str], flusher: &str) -> Events {
        let all: Vec<&str> = containers.iter().copied().chain([flusher]).collect();
        let (child, seen) = support::stream_events(&all);
        let ev = Events {
            child,
            seen,
            flusher: flusher.to_string(),
        };
        // The subscription is live once our own marker comes through.
        ev.flush();
        ev
    }

    /// Wait until every event that happened before this call has been received.
    fn flush(&self) {
        let kills = || {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.container == self.flusher && e.action == "kill")
                .count()
        };
        let before = kills();
        docker(&["kill", "-s", "WINCH", &self.flusher]);
        wait_until("the docker events stream", Duration::from_secs(20), || {
            kills() > before
        });
    }

    /// Lifecycle events (pause, unpause, die, start, stop) of `container`, in order, after a flush.
    fn of(&self, container: &str) -> Vec<Ev> {
        self.flush();
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.container == container)
            .filter(|e| {
                matches!(
                    e.action.as_str(),
                    "pause" | "unpause" | "die" | "start" | "stop"
                )
            })
            .cloned()
            .collect()
    }

    fn actions(&self, container: &str) -> Vec<String> {
        self.of(container).into_iter().map(|e| e.action).collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The manifests in a local target: backup id → parsed manifest.json.
fn manifests(target: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(target) else {
        return out;
    };
    for e in rd.flatten() {
        let m = e.path().join("manifest.json");
        if m.exists() {
            let v: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
            out.insert(e.file_name().to_string_lossy().into_owned(), v);
        }
    }
    out
}

/// The only manifest in a target.
#[track_caller]
fn only_manifest(target: &Path) -> (String, Value) {
    let mut all = manifests(target);
    assert_eq!(all.len(), 1, "one backup expected in {}", target.display());
    all.pop_first().unwrap()
}

/// Every regular file under `dir` (relative paths).
fn files_under(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| !e.file_type().is_dir())
        .map(|e| e.path().strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

/// The line of the summary table that starts with `source`.
#[track_caller]
fn table_row<'a>(stdout: &'a str, source: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(source))
        .unwrap_or_else(|| panic!("no row for {source} in:\n{stdout}"))
}

/// Fill a volume from the host with `files` files of `mib` MiB of base64 text each: compressible enough that
/// zstd level 19 spends real time on it.
fn fill_slowly_compressible(volume: &str, files: usize, mib: usize) {
    let dir = mountpoint(volume);
    let script = format!(
        "for i in $(seq 1 {files}); do head -c {} /dev/urandom | base64 > '{}'/f$i; done",
        mib * 3 / 4 * (1 << 20),
        dir.display()
    );
    let st = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(st.success());
}

/// Kills a spawned voltar when dropped (a failing test must not leave it running).
struct Proc(Child);

impl Proc {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child by pid.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }
    fn wait_output(mut self, timeout: Duration) -> (i32, Option<i32>, String) {
        use std::os::unix::process::ExitStatusExt;
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < timeout,
                "voltar did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        (status.code().unwrap_or(-1), status.signal(), stderr)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A backup slow enough to interrupt: a ~48 MiB volume of base64 text at zstd level 19 on one thread, with a
/// container labelled `voltar.quiesce=pause`. Returns the running voltar once the container is paused.
struct Slow {
    volume: String,
    web: String,
    config: String,
}

fn slow_setup(c: &mut Cleanup, env: &Env) -> Slow {
    let volume = c.volume("slow");
    fill_slowly_compressible(&volume, 16, 4);
    let web = idle(
        c,
        "slowweb",
        &[
            "--label",
            "voltar.quiesce=pause",
            "-v",
            &format!("{volume}:/data"),
        ],
    );
    let config = env.config(
        "slow.toml",
        "[archive]\nzstd-level = 19\nzstd-threads = 1\n",
    );
    Slow {
        volume,
        web,
        config,
    }
}

fn start_slow(env: &Env, s: &Slow) -> Proc {
    let child = env
        .cmd(&[
            "-c",
            &s.config,
            "backup",
            "--only",
            &s.volume,
            "-t",
            &env.target_str(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = Proc(child);
    wait_until(
        "voltar to pause the container",
        Duration::from_secs(60),
        || {
            if let Some(st) = p.0.try_wait().unwrap() {
                panic!("voltar exited before pausing: {st}");
            }
            state(&s.web) == "paused"
        },
    );
    p
}

// ------------------------------------------------------------------------------------------------------------
// Data fidelity

/// Files written by a running container — modes, owners, suid/sticky, symlinks, a hardlink, a FIFO, a sparse
/// file, an empty dir, xattrs — come back identical from the archive with only GNU tar and zstd (rows 13, 14).
#[test]
fn issue2_volume_written_by_a_container_extracts_identically_with_gnu_tar() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("data");
    let script = "cd /data && echo hello > plain && chmod 640 plain && chown 1000:1001 plain \
        && mkdir -p sub/deep empty && echo x > sub/deep/suid && chmod 4755 sub/deep/suid \
        && chown 33:44 sub && chmod 1777 sub && ln -s plain link && ln -s /nonexistent/target dangling \
        && ln plain hard && mkfifo fifo && chmod 620 fifo && chown 7:8 fifo \
        && dd if=/dev/urandom of=rand bs=1k count=300 2>/dev/null \
        && dd if=/dev/urandom of=sparse bs=1k count=1 seek=8000 2>/dev/null \
        && touch -d '2001-02-03 04:05:06' plain && touch .ready";
    let writer = run_sh(&mut c, "writer", &["-v", &format!("{vol}:/data")], script);
    let mp = mountpoint(&vol);
    wait_until(
        "the container to write its files",
        Duration::from_secs(30),
        || mp.join(".ready").exists(),
    );
    // busybox has no setfattr: set xattrs from the host, on the volume's data.
    xattr::set(mp.join("plain"), "user.voltar.test", b"v1").unwrap();
    xattr::set(mp.join("sub"), "user.voltar.dir", b"\x00binary\xff").unwrap();

    let run = env.run(&["--json", "backup", "--only", &vol, "-t", &env.target_str()]);
    run.expect_code(0);
    let report = run.json();
    let id = report["id"].as_str().unwrap().to_string();
    assert_eq!(report["sources"][0]["name"], vol.as_str());
    assert_eq!(report["sources"][0]["status"], "ok");
    assert_eq!(report["targets"][0]["committed"], true);
    assert_eq!(
        state(&writer),
        "running",
        "no quiesce configured: untouched"
    );

    let (mid, m) = only_manifest(&env.target);
    assert_eq!(mid, id);
    let src = source(&m, &vol);
    assert_eq!(src["kind"], "volume");
    assert_eq!(src["counts"]["hardlinks"], 1, "{src:#}");
    assert_eq!(src["counts"]["symlinks"], 2, "{src:#}");
    let archive = env.target.join(&id).join(src["object"].as_str().unwrap());
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(src["stored-bytes"], bytes.len() as u64);
    {
        use sha2::Digest;
        assert_eq!(src["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    }

    // Extract with the standard tools only.
    let out = env.dir().join("extracted");
    std::fs::create_dir(&out).unwrap();
    let st = Command::new("sh")
        .args([
            "-c",
            "zstd -dc \"$1\" | tar -xpf - --xattrs --xattrs-include='*' --numeric-owner -C \"$2\"",
            "sh",
        ])
        .arg(&archive)
        .arg(&out)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "GNU tar + zstd could not extract {}",
        archive.display()
    );

    let a = tree::snapshot(&mp).unwrap();
    let b = tree::snapshot(&out).unwrap();
    let d = tree::diff(&a, &b, &DiffOptions::default());
    assert!(
        d.is_empty(),
        "archive differs from the volume:\n{}",
        d.join("\n")
    );
    // The comparison covered what we wrote.
    let p = |s: &str| b[Path::new(s)].clone();
    assert_eq!(p("plain").mode, 0o640);
    assert_eq!((p("plain").uid, p("plain").gid), (1000, 1001));
    assert_eq!(p("sub/deep/suid").mode, 0o4755);
    assert_eq!(p("sub").mode, 0o1777);
    assert_eq!(p("fifo").kind, tree::Kind::Fifo);
    assert_eq!(p("dangling").kind, tree::Kind::Symlink);
    assert_eq!(p("hard").hardlink_group, Some(PathBuf::from("hard")));
    assert!(p("sparse").is_sparse());
    assert_eq!(
        p("plain").xattrs.get(b"user.voltar.test".as_slice()),
        Some(&b"v1".to_vec())
    );
    assert!(p("sub").xattrs.contains_key(b"user.voltar.dir".as_slice()));

    // `list --json` shows it.
    let list = env.run(&["--json", "list", "-t", &env.target_str()]);
    list.expect_code(0);
    let l = list.json();
    assert_eq!(l["backups"].as_array().unwrap().len(), 1);
    assert_eq!(l["backups"][0]["id"], id.as_str());
}

// ------------------------------------------------------------------------------------------------------------
// Quiescing (rows 6 and 7)

/// Two volumes with a pause-labelled writer each: each writer is paused only while *its* volume is read (A is
/// unpaused before B is paused); a read-only user, an unrelated container, a user-paused and a stopped user are
/// never touched and end as they were; downtime is in the manifest and the summary table.
#[test]
fn issue2_pause_only_rw_users_and_only_while_their_volume_is_read() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let va = c.volume("a");
    let vb = c.volume("b");
    let other = c.volume("other");
    for v in [&va, &vb] {
        std::fs::write(mountpoint(v).join("f"), vec![7u8; 2 << 20]).unwrap();
    }
    let pause = ["--label", "voltar.quiesce=pause"];
    let mnt = |v: &str| format!("{v}:/data");
    let mnt_ro = |v: &str| format!("{v}:/data:ro");
    let wa = idle(&mut c, "wa", &[&pause[..], &["-v", &mnt(&va)]].concat());
    let wb = idle(&mut c, "wb", &[&pause[..], &["-v", &mnt(&vb)]].concat());
    let ro = idle(&mut c, "ro", &[&pause[..], &["-v", &mnt_ro(&va)]].concat());
    let unrelated = idle(
        &mut c,
        "unrel",
        &[&pause[..], &["-v", &mnt(&other)]].concat(),
    );
    let user_paused = idle(
        &mut c,
        "upaused",
        &[&pause[..], &["-v", &mnt(&va)]].concat(),
    );
    docker(&["pause", &user_paused]);
    let stopped = idle(
        &mut c,
        "stopped",
        &[&pause[..], &["-v", &mnt(&va)]].concat(),
    );
    docker(&["stop", "-t", "5", &stopped]);
    assert_eq!(state(&stopped), "exited");

    let ev = Events::watch(&[&wa, &wb, &ro, &unrelated, &user_paused, &stopped], &ro);
    let run = env.run(&[
        "backup",
        "--only",
        &va,
        "--only",
        &vb,
        "-t",
        &env.target_str(),
    ]);
    run.expect_code(0);

    // Each writer paused exactly once, and A's pause interval ends before B's begins.
    let a = ev.of(&wa);
    let b = ev.of(&wb);
    assert_eq!(
        a.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["pause", "unpause"]
    );
    assert_eq!(
        b.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["pause", "unpause"]
    );
    assert!(
        a[1].nanos < b[0].nanos || b[1].nanos < a[0].nanos,
        "pause intervals overlap: {wa} was paused while {vb} was read or {wb} while {va} was: {a:?} / {b:?}"
    );
    for (name, end) in [
        (&ro, "running"),
        (&unrelated, "running"),
        (&user_paused, "paused"),
        (&stopped, "exited"),
    ] {
        assert!(
            ev.actions(name).is_empty(),
            "{name} was touched: {:?}",
            ev.of(name)
        );
        assert_eq!(state(name), end, "{name}");
    }
    assert_eq!(state(&wa), "running");
    assert_eq!(state(&wb), "running");
    assert!(env.journal_files().is_empty(), "{:?}", env.journal_files());

    // Downtime in the manifest, only for what was paused.
    let (_, m) = only_manifest(&env.target);
    let sa = source(&m, &va);
    let rec = container_record(sa, &wa);
    assert_eq!(rec["action"], "pause");
    assert!(rec["downtime-ms"].as_u64().unwrap() > 0, "{rec:#}");
    for name in [&ro, &user_paused, &stopped] {
        let r = container_record(sa, name);
        assert_eq!(r["action"], "none", "{r:#}");
        assert_eq!(r["downtime-ms"], 0, "{r:#}");
    }
    assert_eq!(container_record(sa, &ro)["rw"], false);
    assert!(
        !sa["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == unrelated.as_str()),
        "{sa:#}"
    );
    // … and in the summary table.
    assert!(run.stdout.contains("DOWNTIME"), "{}", run.stdout);
    let row = table_row(&run.stdout, &va);
    assert!(row.contains(&format!("{wa} pause ")), "{}", run.stdout);
    assert!(!row.contains(&ro), "{}", run.stdout);
    assert!(table_row(&run.stdout, &vb).contains(&format!("{wb} pause ")));
}

/// `stop` from the config default (`--config` file): the unlabelled writer is stopped and started again; a
/// `voltar.quiesce=pause` label overrides the default for its container.
#[test]
fn issue2_stop_by_config_default_and_label_overrides_it() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("db");
    std::fs::write(mountpoint(&vol).join("f"), b"data").unwrap();
    let m = format!("{vol}:/data");
    let db = idle(&mut c, "db", &["-v", &m]);
    let side = idle(
        &mut c,
        "side",
        &["--label", "voltar.quiesce=pause", "-v", &m],
    );
    let flusher = idle(&mut c, "flush", &[]);
    let cfg = env.config(
        "stop.toml",
        "[quiesce]\ndefault = \"stop\"\nstop-timeout = \"10s\"\n",
    );

    let plan = env.run(&["-c", &cfg, "--json", "plan", "--only", &vol]);
    plan.expect_code(0);
    let p = plan.json();
    let ps = &p["sources"][0];
    assert_eq!(container_record(ps, &db)["action"], "stop");
    assert_eq!(container_record(ps, &side)["action"], "pause");

    let ev = Events::watch(&[&db, &side], &flusher);
    let run = env.run(&[
        "-c",
        &cfg,
        "backup",
        "--only",
        &vol,
        "-t",
        &env.target_str(),
    ]);
    run.expect_code(0);
    let acts = ev.actions(&db);
    assert!(
        acts.first().map(String::as_str) == Some("die")
            && acts.last().map(String::as_str) == Some("start")
            && acts.iter().filter(|a| *a == "start").count() == 1,
        "{db}: stopped once, then started once: {acts:?}"
    );
    assert_eq!(ev.actions(&side), ["pause", "unpause"]);
    assert_eq!(state(&db), "running");
    assert_eq!(state(&side), "running");

    let (_, man) = only_manifest(&env.target);
    let s = source(&man, &vol);
    let r = container_record(s, &db);
    assert_eq!(r["action"], "stop");
    assert!(r["downtime-ms"].as_u64().unwrap() > 0);
    assert!(
        table_row(&run.stdout, &vol).contains(&format!("{db} stop ")),
        "{}",
        run.stdout
    );
}

// ------------------------------------------------------------------------------------------------------------
// Failures (rows 1, 6)

/// The target fills up while the volume is read (container paused): the container is resumed, the run fails
/// with exit 1 naming the target and the cause, and nothing is left in the target.
#[test]
fn issue2_target_failing_mid_read_resumes_containers_and_commits_nothing() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("full");
    let mut data = vec![0u8; 4 << 20];
    rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);
    std::fs::write(mountpoint(&vol).join("random"), &data).unwrap();
    let web = idle(
        &mut c,
        "web",
        &[
            "--label",
            "voltar.quiesce=pause",
            "-v",
            &format!("{vol}:/data"),
        ],
    );
    let flusher = idle(&mut c, "flush", &[]);
    let _fs = Tmpfs::mount(&env.target, "1m");

    let ev = Events::watch(&[&web], &flusher);
    let run = env.run(&["backup", "--only", &vol, "-t", &env.target_str()]);
    run.expect_code(1);
    assert_eq!(
        ev.actions(&web),
        ["pause", "unpause"],
        "paused during the read, then resumed"
    );
    assert_eq!(state(&web), "running");
    assert!(env.journal_files().is_empty());
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains(&env.target_str()), "names the target:\n{all}");
    assert!(all.contains("No space left on device"), "says why:\n{all}");
    assert!(
        table_row(&run.stdout, &vol).contains("FAILED"),
        "{}",
        run.stdout
    );
    assert!(
        files_under(&env.target).is_empty(),
        "left behind: {:?}",
        files_under(&env.target)
    );
}

/// A target that cannot be written at all (a regular file) fails before any container is touched, naming the
/// target and the cause.
#[test]
fn issue2_unwritable_target_fails_before_touching_containers() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("v");
    std::fs::write(mountpoint(&vol).join("f"), b"x").unwrap();
    let web = idle(
        &mut c,
        "web",
        &[
            "--label",
            "voltar.quiesce=pause",
            "-v",
            &format!("{vol}:/data"),
        ],
    );
    let flusher = idle(&mut c, "flush", &[]);
    let file = env.dir().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let target = file.to_string_lossy().into_owned();

    let ev = Events::watch(&[&web], &flusher);
    let run = env.run(&["backup", "--only", &vol, "-t", &target]);
    assert!(
        matches!(run.code, 1 | 2),
        "exit {}:\n{}{}",
        run.code,
        run.stdout,
        run.stderr
    );
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains(&target), "names the target:\n{all}");
    assert!(all.contains("Not a directory"), "says why:\n{all}");
    assert!(
        ev.actions(&web).is_empty(),
        "container touched although nothing could be written"
    );
    assert_eq!(state(&web), "running");
    assert_eq!(std::fs::read(&file).unwrap(), b"", "the file is untouched");
}

/// One unreadable source (its data directory vanished) does not stop the next one: that one is stored and
/// committed, the manifest lists the failure, exit code 1 (row 6 of the architecture's safety rules).
#[test]
fn issue2_one_failing_source_does_not_stop_the_others() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    // Sources are read in name order: the broken one comes first.
    let base = unique("src");
    let (bad, good) = (format!("{base}-a-bad"), format!("{base}-b-good"));
    for v in [&bad, &good] {
        docker(&["volume", "create", v]);
        c.volumes.push(v.clone());
    }
    std::fs::write(mountpoint(&good).join("f"), b"good data").unwrap();
    let bad_dir = mountpoint(&bad);
    std::fs::remove_dir_all(&bad_dir).unwrap();

    let run = env.run(&[
        "--json",
        "backup",
        "--only",
        &bad,
        "--only",
        &good,
        "-t",
        &env.target_str(),
    ]);
    run.expect_code(1);
    let r = run.json();
    let status = |n: &str| source(&r, n)["status"].clone();
    assert_eq!(status(&bad), "failed");
    assert_eq!(status(&good), "ok");
    assert_eq!(r["targets"][0]["committed"], true);

    let (_, m) = only_manifest(&env.target);
    assert_eq!(m["sources"].as_array().unwrap().len(), 1);
    assert_eq!(m["sources"][0]["name"], good.as_str());
    let failed = m["failed"].as_array().expect("failed sources listed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["name"], bad.as_str());
    let err = failed[0]["error"].as_str().unwrap();
    assert!(err.contains(&bad_dir.display().to_string()), "{err}");

    // The table run says the same.
    let run = env.run(&[
        "backup",
        "--only",
        &bad,
        "--only",
        &good,
        "-t",
        &env.target_str(),
    ]);
    run.expect_code(1);
    assert!(
        table_row(&run.stdout, &bad).contains("FAILED"),
        "{}",
        run.stdout
    );
    assert!(
        table_row(&run.stdout, &good).contains("ok"),
        "{}",
        run.stdout
    );
    let list = env.run(&["list", "-t", &env.target_str()]);
    list.expect_code(0);
    assert!(list.stdout.contains("1 failed"), "{}", list.stdout);
    // Put the directory back so the volume can be removed cleanly.
    std::fs::create_dir(&bad_dir).unwrap();
}

// ------------------------------------------------------------------------------------------------------------
// Signals and locks (rows 6, 8)

/// SIGKILL while a container is paused: it stays paused (nobody is left to resume it) until `voltar recover`
/// replays the journal; then it runs and the journal is gone.
#[test]
fn issue2_sigkill_while_paused_is_repaired_by_recover() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let s = slow_setup(&mut c, &env);
    let p = start_slow(&env, &s);
    p.signal(libc::SIGKILL);
    let (_, sig, _) = p.wait_output(Duration::from_secs(10));
    assert_eq!(sig, Some(libc::SIGKILL));
    assert_eq!(
        state(&s.web),
        "paused",
        "nobody resumed it: the journal must"
    );
    assert_eq!(env.journal_files().len(), 1, "{:?}", env.journal_files());

    let rec = env.run(&["recover"]);
    rec.expect_code(0);
    assert!(
        rec.stdout.contains(&s.web),
        "names the container:\n{}",
        rec.stdout
    );
    assert_eq!(state(&s.web), "running");
    assert!(env.journal_files().is_empty(), "{:?}", env.journal_files());
    assert!(manifests(&env.target).is_empty());

    let again = env.run(&["recover"]);
    again.expect_code(0);
    assert!(
        again.stdout.contains("nothing to recover"),
        "{}",
        again.stdout
    );
}

/// SIGKILL while paused, then the next `voltar backup` (not recover) on the same target: it resumes the
/// container first, says so, is not blocked by the dead run's lock, and succeeds.
#[test]
fn issue2_sigkill_then_next_backup_repairs_first_and_the_dead_lock_is_free() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let s = slow_setup(&mut c, &env);
    let small = c.volume("small");
    std::fs::write(mountpoint(&small).join("f"), b"small").unwrap();
    let p = start_slow(&env, &s);
    p.signal(libc::SIGKILL);
    p.wait_output(Duration::from_secs(10));
    assert_eq!(state(&s.web), "paused");

    let run = env.run(&["backup", "--only", &small, "-t", &env.target_str()]);
    run.expect_code(0);
    assert_eq!(state(&s.web), "running");
    assert!(
        run.stdout.contains("recovered") && run.stdout.contains(&s.web),
        "the run reports what it repaired:\n{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("recovered from an interrupted run") && run.stderr.contains(&s.web),
        "and warns about it:\n{}",
        run.stderr
    );
    assert!(env.journal_files().is_empty(), "{:?}", env.journal_files());
    let (_, m) = only_manifest(&env.target);
    assert_eq!(m["sources"][0]["name"], small.as_str());
}

/// SIGTERM while paused: exit 143, the container runs again, nothing is committed and `list` shows nothing.
/// While the first run holds the target, a second run on it fails fast naming the first one's pid.
#[test]
fn issue2_sigterm_resumes_and_commits_nothing_and_a_second_run_is_refused() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let s = slow_setup(&mut c, &env);
    let small = c.volume("small");
    let p = start_slow(&env, &s);

    // Row 8: one run per target.
    let t0 = Instant::now();
    let second = env.run(&["backup", "--only", &small, "-t", &env.target_str()]);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the second run must fail fast, not wait"
    );
    // The only target is busy: nothing can be done, a fatal error.
    second.expect_code(2);
    let all = format!("{}{}", second.stdout, second.stderr);
    assert!(
        all.contains(&format!("pid {}", p.pid())) && all.contains("another voltar run"),
        "names the other run:\n{all}"
    );
    second.expect_clean_error();
    assert_eq!(
        state(&s.web),
        "paused",
        "the second run does not meddle with the first"
    );

    p.signal(libc::SIGTERM);
    let (code, _, stderr) = p.wait_output(Duration::from_secs(30));
    assert_eq!(code, 143, "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(state(&s.web), "running");
    assert!(env.journal_files().is_empty(), "{:?}", env.journal_files());
    assert!(manifests(&env.target).is_empty());
    assert!(
        files_under(&env.target).is_empty(),
        "left behind: {:?}",
        files_under(&env.target)
    );
    let list = env.run(&["--json", "list", "-t", &env.target_str()]);
    list.expect_code(0);
    let l = list.json();
    assert_eq!(l["backups"].as_array().unwrap().len(), 0, "{l:#}");
    assert_eq!(l["incomplete"].as_array().unwrap().len(), 0, "{l:#}");
}

// ------------------------------------------------------------------------------------------------------------
// CLI behaviour

/// `plan --json`: volumes with their containers (name, state, rw, action); anonymous volumes, `voltar.backup=false`
/// and bind mounts without opt-in are skipped with a reason; a container label `voltar.backup=true` opts in its
/// bind mount. The document is stable from one call to the next.
#[test]
fn issue2_plan_json_lists_sources_containers_and_skips() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("app");
    let off = unique("off");
    docker(&["volume", "create", "--label", "voltar.backup=false", &off]);
    c.volumes.push(off.clone());
    let bind_in = env.dir().join("bind-in");
    let bind_out = env.dir().join("bind-out");
    std::fs::create_dir_all(&bind_in).unwrap();
    std::fs::create_dir_all(&bind_out).unwrap();
    std::fs::write(bind_in.join("conf"), b"k=v").unwrap();
    // The test image runs as root; make the bind dirs plainly readable.
    std::fs::set_permissions(env.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let web = idle(
        &mut c,
        "web",
        &[
            "--label",
            "voltar.quiesce=pause",
            "-v",
            &format!("{vol}:/data"),
            "-v",
            "/anon",
        ],
    );
    let reader = idle(&mut c, "reader", &["-v", &format!("{vol}:/data:ro")]);
    let opted = idle(
        &mut c,
        "opted",
        &[
            "--label",
            "voltar.backup=true",
            "-v",
            &format!("{}:/conf", bind_in.display()),
        ],
    );
    let _plain = idle(
        &mut c,
        "plainbind",
        &["-v", &format!("{}:/x", bind_out.display())],
    );
    let _offuser = idle(&mut c, "offuser", &["-v", &format!("{off}:/data")]);
    let anon = docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{if eq .Destination \"/anon\"}}{{.Name}}{{end}}{{end}}",
        &web,
    ]);
    assert_eq!(anon.len(), 64, "anonymous volume name: {anon}");
    c.volumes.push(anon.clone());

    let p1 = env.run(&["--json", "plan"]);
    p1.expect_code(0);
    let p = p1.json();
    let sources = p["sources"].as_array().unwrap();
    let skipped = p["skipped"].as_array().unwrap();
    let find =
        |list: &[Value], pred: &dyn Fn(&Value) -> bool| list.iter().find(|s| pred(s)).cloned();

    let s = find(sources, &|s| s["name"] == vol.as_str()).expect("volume planned");
    assert_eq!(s["kind"], "volume");
    assert_eq!(s["size"], 0);
    let w = container_record(&s, &web);
    assert_eq!(
        (w["state"].as_str(), w["rw"].as_bool(), w["action"].as_str()),
        (Some("running"), Some(true), Some("pause"))
    );
    let r = container_record(&s, &reader);
    assert_eq!(
        (r["rw"].as_bool(), r["action"].as_str()),
        (Some(false), Some("none"))
    );
    assert!(r["reason"].as_str().unwrap().contains("read-only"), "{r:#}");

    let a =
        find(skipped, &|s| s["name"] == anon.as_str()).expect("anonymous volume listed as skipped");
    assert!(a["reason"].as_str().unwrap().contains("anonymous"), "{a:#}");
    let o = find(skipped, &|s| s["name"] == off.as_str())
        .expect("labelled-off volume listed as skipped");
    assert!(
        o["reason"]
            .as_str()
            .unwrap()
            .contains("voltar.backup=false"),
        "{o:#}"
    );
    let bi =
        find(sources, &|s| s["path"] == bind_in.to_str().unwrap()).expect("opted-in bind planned");
    assert_eq!(bi["kind"], "bind");
    assert_eq!(container_record(&bi, &opted)["action"], "none");
    let bo =
        find(skipped, &|s| s["path"] == bind_out.to_str().unwrap()).expect("plain bind skipped");
    assert_eq!(bo["kind"], "bind");

    // Stable: the same document for the same state (compare our entries; other tests change the host).
    let p2 = env.run(&["--json", "plan"]).json();
    let ours = |doc: &Value| {
        let mut v: Vec<String> = ["sources", "skipped"]
            .iter()
            .flat_map(|k| doc[k].as_array().unwrap().clone())
            .filter(|s| {
                let n = s["name"].as_str().unwrap();
                n == vol || n == off || n == anon || s["path"] == bind_in.to_str().unwrap()
            })
            .map(|s| s.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ours(&p), ours(&p2));
    assert_eq!(ours(&p).len(), 4);

    // The opted-in bind mount is backed up under its planned name.
    let bind_name = bi["name"].as_str().unwrap().to_string();
    let run = env.run(&[
        "--json",
        "backup",
        "--only",
        &bind_name,
        "-t",
        &env.target_str(),
    ]);
    run.expect_code(0);
    let (_, m) = only_manifest(&env.target);
    let src = source(&m, &bind_name);
    assert_eq!(src["kind"], "bind");
    assert_eq!(src["counts"]["files"], 1);
    // The human plan reads as a table too.
    let text = env.run(&["plan", "--only", &vol]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("SOURCE") && text.stdout.contains(&web),
        "{}",
        text.stdout
    );
}

/// `backup --dry-run` prints the plan and changes nothing: no target content, no container touched.
#[test]
fn issue2_dry_run_changes_nothing() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("dry");
    std::fs::write(mountpoint(&vol).join("f"), b"x").unwrap();
    let web = idle(
        &mut c,
        "web",
        &[
            "--label",
            "voltar.quiesce=pause",
            "-v",
            &format!("{vol}:/data"),
        ],
    );
    let flusher = idle(&mut c, "flush", &[]);
    let ev = Events::watch(&[&web], &flusher);
    let run = env.run(&[
        "backup",
        "--dry-run",
        "--only",
        &vol,
        "-t",
        &env.target_str(),
    ]);
    run.expect_code(0);
    assert!(
        run.stdout.contains(&vol) && run.stdout.contains("pause"),
        "{}",
        run.stdout
    );
    assert!(!env.target.exists(), "dry run created the target");
    assert!(ev.actions(&web).is_empty());
    assert!(env.journal_files().is_empty());
}

/// Bad input gives one clear line naming the thing and the fix, exit 2, no panic or library noise.
#[test]
fn issue2_bad_input_fails_with_exit_2_and_a_clear_message() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("known");
    let t = env.target_str();

    let missing = unique("no-such-volume");
    let r = env.run(&["backup", "--only", &missing, "-t", &t]);
    r.expect_code(2).expect_clean_error();
    assert!(
        r.stderr.contains(&missing) && r.stderr.contains("voltar plan"),
        "{}",
        r.stderr
    );

    let cfg = env.config("bad.toml", "[quiesce]\ndefualt = \"pause\"\n");
    let r = env.run(&["-c", &cfg, "backup", "--only", &vol, "-t", &t]);
    r.expect_code(2).expect_clean_error();
    assert!(
        r.stderr.contains("defualt") && r.stderr.contains("bad.toml"),
        "{}",
        r.stderr
    );

    let r = env.run(&["-c", "/nonexistent/voltar.toml", "plan"]);
    r.expect_code(2).expect_clean_error();
    assert!(
        r.stderr.contains("/nonexistent/voltar.toml"),
        "{}",
        r.stderr
    );

    for args in [&["plan"][..], &["backup", "-t", &t][..], &["recover"][..]] {
        let r = {
            let out = env
                .cmd(args)
                .env("DOCKER_HOST", "unix:///nonexistent.sock")
                .output()
                .unwrap();
            Run::from(args, out)
        };
        r.expect_code(2).expect_clean_error();
        assert!(r.stderr.contains("/nonexistent.sock"), "{}", r.stderr);
    }
    assert!(!env.target.exists(), "nothing written on errors");
}

/// With no config at all (none given, none in /etc/voltar or the working directory), `voltar backup --target DIR`
/// works and touches no container.
#[test]
fn issue2_backup_without_any_config() {
    require_docker!();
    if Path::new("/etc/voltar/config.toml").exists() {
        panic!("/etc/voltar/config.toml exists on this machine: this test needs a host without it");
    }
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("nocfg");
    std::fs::write(mountpoint(&vol).join("f"), b"x").unwrap();
    let web = idle(&mut c, "web", &["-v", &format!("{vol}:/data")]);
    let flusher = idle(&mut c, "flush", &[]);
    let ev = Events::watch(&[&web], &flusher);
    let run = env.run(&["backup", "--only", &vol, "--target", &env.target_str()]);
    run.expect_code(0);
    assert!(
        run.stderr.trim().is_empty(),
        "no warnings expected:\n{}",
        run.stderr
    );
    assert!(ev.actions(&web).is_empty(), "no quiesce without a config");
    let (id, m) = only_manifest(&env.target);
    assert_eq!(source(&m, &vol)["counts"]["files"], 1);
    let row = table_row(&run.stdout, &vol);
    assert!(row.contains("ok"), "{}", run.stdout);
    assert!(run.stdout.contains("committed"), "{}", run.stdout);
    let show = env.run(&["show", "latest", "-t", &env.target_str()]);
    show.expect_code(0);
    assert!(
        show.stdout.contains(&id) && show.stdout.contains(&vol),
        "{}",
        show.stdout
    );
}

/// `--quiet` is for cron: nothing at all on success (no mail), the full summary and a non-zero exit on failure.
#[test]
fn issue2_quiet_is_silent_on_success_and_speaks_on_failure() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("quiet");
    std::fs::write(mountpoint(&vol).join("f"), b"x").unwrap();
    let ok = env.run(&[
        "--quiet",
        "backup",
        "--only",
        &vol,
        "--target",
        &env.target_str(),
    ]);
    ok.expect_code(0);
    assert_eq!(ok.stdout, "", "quiet success prints nothing");
    assert_eq!(ok.stderr, "", "quiet success prints nothing");
    only_manifest(&env.target);

    // One of two targets cannot be written (a file): it is skipped, the run finishes with exit 1 and prints
    // the summary.
    let file = env.dir().join("a-file");
    std::fs::write(&file, b"not a dir").unwrap();
    let bad = env.run(&[
        "--quiet",
        "backup",
        "--only",
        &vol,
        "--target",
        &env.target_str(),
        "--target",
        file.to_str().unwrap(),
    ]);
    bad.expect_code(1);
    assert!(
        table_row(&bad.stdout, &vol).contains("partial"),
        "the summary is printed on failure:\n{}",
        bad.stdout
    );
    assert!(bad.stdout.contains("NOT committed"), "{}", bad.stdout);
    // With no usable target at all the run is fatal (exit 2) and says why on stderr.
    let fatal = env.run(&[
        "--quiet",
        "backup",
        "--only",
        &vol,
        "--target",
        file.to_str().unwrap(),
    ]);
    fatal.expect_code(2);
    assert!(fatal.stderr.contains("a-file"), "{}", fatal.stderr);
}

// ------------------------------------------------------------------------------------------------------------
// Issue 8, "Silent gaps" (row 24): every entry that existed is in the archive, at any path length; one that
// cannot be read makes the source incomplete (exit 1), never a warning under "ok".

/// `levels` nested directories of 200-byte names under `root`, made with calls relative to directory
/// descriptors (the path grows past PATH_MAX, where path-based calls fail). Returns the deepest, open, and the
/// relative path of the chain.
fn deep_dirs(root: &Path, levels: usize) -> (OwnedFd, PathBuf) {
    let mut cur: OwnedFd = std::fs::File::open(root).unwrap().into();
    let mut rel = PathBuf::new();
    for i in 0..levels {
        let mut name = format!("level-{i:02}-").into_bytes();
        name.resize(200, b'x');
        let c = CString::new(name.clone()).unwrap();
        // SAFETY: valid fd and C string.
        assert_eq!(
            unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755) },
            0
        );
        cur = open_dir_at(cur.as_raw_fd(), OsStr::from_bytes(&name)).unwrap();
        rel.push(OsStr::from_bytes(&name));
    }
    (cur, rel)
}

fn open_dir_at(dir: RawFd, name: &OsStr) -> std::io::Result<OwnedFd> {
    let c = CString::new(name.as_bytes()).unwrap();
    // SAFETY: valid fd and C string; the fd is owned below.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Create (or replace) the file `name` in the open directory `dir`.
fn write_at(dir: RawFd, name: &str, data: &[u8]) {
    let c = CString::new(name).unwrap();
    // SAFETY: valid fd and C string; the fd is owned by the File.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o640,
        )
    };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(data).unwrap();
}

/// The content of the file at `rel` under `root`, reached one component at a time.
fn read_deep(root: &Path, rel: &Path) -> std::io::Result<Vec<u8>> {
    let mut cur: OwnedFd = std::fs::File::open(root)?.into();
    let parent = rel.parent().unwrap();
    for c in parent.components() {
        cur = open_dir_at(cur.as_raw_fd(), c.as_os_str())?;
    }
    let c = CString::new(rel.file_name().unwrap().as_bytes()).unwrap();
    // SAFETY: valid fd and C string; the fd is owned by the File.
    let fd = unsafe { libc::openat(cur.as_raw_fd(), c.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut v = Vec::new();
    unsafe { std::fs::File::from_raw_fd(fd) }.read_to_end(&mut v)?;
    Ok(v)
}

#[track_caller]
fn assert_same_tree(a: &Path, b: &Path) {
    let d = tree::diff(
        &tree::snapshot(a).unwrap(),
        &tree::snapshot(b).unwrap(),
        &DiffOptions::default(),
    );
    assert!(
        d.is_empty(),
        "{} differs from {}:\n{}",
        b.display(),
        a.display(),
        d.join("\n")
    );
}

/// A file 5,000+ bytes deep in a volume is backed up (GNU tar lists it), and comes back byte-identical from
/// `restore --to-dir`, into a new volume, and alone with `--path` (moved in, and swapped with a changed copy).
#[test]
fn issue8_a_path_longer_than_path_max_round_trips_through_backup_and_restore() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("deep");
    let mp = mountpoint(&vol);
    std::fs::write(mp.join("top.txt"), b"near the root").unwrap();
    let (deep, rel) = deep_dirs(&mp, 25);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write_at(deep.as_raw_fd(), "deep.bin", &data);
    drop(deep);
    let deep_file = rel.join("deep.bin");
    assert!(deep_file.as_os_str().len() > 5000);

    let run = env.run(&["--json", "backup", "--only", &vol, "-t", &env.target_str()]);
    run.expect_code(0);
    let report = run.json();
    let s = &report["sources"][0];
    assert_eq!(s["status"], "ok", "{s:#}");
    assert_eq!(s["counts"]["files"], 2, "the deep file is counted: {s:#}");
    assert_eq!(s["counts"]["dirs"], 26, "{s:#}");
    assert!(s.get("not-archived").is_none(), "{s:#}");
    let id = report["id"].as_str().unwrap().to_string();

    // The archive holds it, as GNU tar sees it.
    let (_, m) = only_manifest(&env.target);
    let archive = env
        .target
        .join(&id)
        .join(source(&m, &vol)["object"].as_str().unwrap());
    let list = Command::new("tar")
        .env("LC_ALL", "C")
        .args(["--zstd", "-tvf"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(list.status.success() && list.stderr.is_empty());
    let listing = String::from_utf8(list.stdout).unwrap();
    let deep_name = deep_file.to_str().unwrap();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw-r-----") && l.ends_with(deep_name)),
        "GNU tar does not list the deep file"
    );

    // Whole restores: into a directory and into a new volume.
    let to_dir = env.dir().join("to-dir");
    let to_dir_s = to_dir.to_str().unwrap();
    env.run(&[
        "restore",
        &id,
        "--source",
        &vol,
        "--to-dir",
        to_dir_s,
        "-t",
        &env.target_str(),
    ])
    .expect_code(0);
    assert_same_tree(&mp, &to_dir);
    assert_eq!(read_deep(&to_dir, &deep_file).unwrap(), data);

    let copy = unique("deep-copy");
    c.volumes.push(copy.clone());
    env.run(&[
        "restore",
        &id,
        "--source",
        &vol,
        "--to-volume",
        &copy,
        "-t",
        &env.target_str(),
    ])
    .expect_code(0);
    assert_same_tree(&mp, &mountpoint(&copy));

    // `--path` of the deep file alone: moved into an empty directory...
    let part = env.dir().join("part");
    env.run(&[
        "restore",
        &id,
        "--source",
        &vol,
        "--to-dir",
        part.to_str().unwrap(),
        "--path",
        deep_name,
        "-t",
        &env.target_str(),
    ])
    .expect_code(0);
    assert_eq!(read_deep(&part, &deep_file).unwrap(), data);
    assert!(!part.join("top.txt").exists(), "only the selected path");

    // ... and swapped with a changed copy in the original volume (its safety backup packs the deep tree too).
    let (deep, _) = {
        let mut cur: OwnedFd = std::fs::File::open(&mp).unwrap().into();
        for comp in rel.components() {
            cur = open_dir_at(cur.as_raw_fd(), comp.as_os_str()).unwrap();
        }
        (cur, ())
    };
    write_at(deep.as_raw_fd(), "deep.bin", b"changed");
    drop(deep);
    env.run(&[
        "restore",
        &id,
        "--source",
        &vol,
        "--path",
        deep_name,
        "-t",
        &env.target_str(),
    ])
    .expect_code(0);
    assert_eq!(read_deep(&mp, &deep_file).unwrap(), data);
    assert_eq!(std::fs::read(mp.join("top.txt")).unwrap(), b"near the root");
}

impl Env {
    /// `voltar <args>` without the capabilities that let root ignore permission bits (CAP_DAC_OVERRIDE,
    /// CAP_DAC_READ_SEARCH): a file root cannot read then really cannot be read, as on a filesystem that
    /// refuses root (root-squashed NFS, FUSE).
    fn run_without_dac_override(&self, args: &[&str]) -> Run {
        let out = Command::new("setpriv")
            .args(["--bounding-set", "-dac_override,-dac_read_search", "--"])
            .arg(BIN)
            .args(args)
            .current_dir(&self.cwd)
            .env("VOLTAR_STATE_DIR", &self.state)
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .output()
            .expect("run setpriv voltar");
        Run::from(args, out)
    }
}

/// An unreadable file and an unreadable directory: the source is "incomplete", the run exits 1, and the JSON
/// report, the summary, the manifest and `voltar show` name both entries.
#[test]
fn issue8_unreadable_entries_make_the_source_incomplete_and_the_run_exit_1() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("unreadable");
    let mp = mountpoint(&vol);
    std::fs::write(mp.join("a-readable"), b"fine").unwrap();
    std::fs::write(mp.join("b-secret"), b"nobody may read this").unwrap();
    std::fs::set_permissions(mp.join("b-secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::create_dir(mp.join("c-locked")).unwrap();
    std::fs::write(mp.join("c-locked/inside"), b"hidden").unwrap();
    std::fs::set_permissions(mp.join("c-locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::write(mp.join("d-readable"), b"fine too").unwrap();

    let run = env.run_without_dac_override(&[
        "--json",
        "backup",
        "--only",
        &vol,
        "-t",
        &env.target_str(),
    ]);
    run.expect_code(1);
    let report = run.json();
    // Issue 10: the run as a whole says so too.
    assert_eq!(report["status"], "incomplete", "{report:#}");
    let s = &report["sources"][0];
    assert_eq!(s["status"], "incomplete", "{s:#}");
    assert_eq!(s["not-archived-count"], 2, "{s:#}");
    let expected = [
        "b-secret: cannot open: Permission denied (os error 13)",
        "c-locked/: contents not archived: cannot open directory: Permission denied (os error 13)",
    ];
    assert_eq!(s["not-archived"], serde_json::json!(expected), "{s:#}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.starts_with("2 entries could not be archived (first: b-secret: cannot open"),
        "{error}"
    );
    // What could be read is stored and committed: better than nothing, and it says what it lacks.
    assert_eq!(s["counts"]["files"], 2, "{s:#}");
    assert_eq!(report["targets"][0]["committed"], true);
    let (_, m) = only_manifest(&env.target);
    let rec = source(&m, &vol);
    assert_eq!(rec["not-archived-count"], 2, "{rec:#}");
    assert_eq!(rec["not-archived"], serde_json::json!(expected), "{rec:#}");

    // The summary a cron mail shows.
    let target2 = env.dir().join("second");
    let human = env.run_without_dac_override(&[
        "--quiet",
        "backup",
        "--only",
        &vol,
        "-t",
        target2.to_str().unwrap(),
    ]);
    human.expect_code(1);
    assert!(
        table_row(&human.stdout, &vol).contains("INCOMPLETE: 2 entries not archived"),
        "{}",
        human.stdout
    );
    for e in expected {
        assert!(
            human.stdout.contains(&format!("not archived: {vol}: {e}")),
            "{e} not in:\n{}",
            human.stdout
        );
    }
    let show = env.run(&["show", "latest", "-t", target2.to_str().unwrap()]);
    show.expect_code(0);
    assert!(
        show.stdout.contains(&format!(
            "incomplete: {vol}: 2 entries not archived:\n  {}",
            expected[0]
        )),
        "{}",
        show.stdout
    );
}

/// Live changes stay warnings: files deleted while the volume is read, and a socket (no data; the program
/// listening on it creates it again), leave the source "ok" and the exit code 0.
#[test]
fn issue8_files_vanishing_during_backup_and_sockets_stay_ok() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("vanishing");
    let mp = mountpoint(&vol);
    let _sock = std::os::unix::net::UnixListener::bind(mp.join("app.sock")).unwrap();
    let many = mp.join("many");
    for attempt in 0..10 {
        let _ = std::fs::remove_dir_all(&many);
        std::fs::create_dir(&many).unwrap();
        for i in 0..20_000 {
            std::fs::write(many.join(format!("f{i:05}")), b"x").unwrap();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deleter = {
            let (stop, many) = (stop.clone(), many.clone());
            // From the end, so the walk (in name order) meets names that were listed but are gone.
            std::thread::spawn(move || {
                for i in (0..20_000).rev() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let _ = std::fs::remove_file(many.join(format!("f{i:05}")));
                }
            })
        };
        let target = env.dir().join(format!("t{attempt}"));
        let run = env.run(&[
            "--json",
            "backup",
            "--only",
            &vol,
            "-t",
            target.to_str().unwrap(),
        ]);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        deleter.join().unwrap();
        run.expect_code(0);
        let s = &run.json()["sources"][0];
        assert_eq!(s["status"], "ok", "{s:#}");
        assert!(s.get("not-archived").is_none(), "{s:#}");
        let warnings: Vec<&str> = s["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("app.sock: skipped: a socket")),
            "{warnings:?}"
        );
        if warnings
            .iter()
            .any(|w| w.ends_with(": skipped: vanished during backup"))
        {
            return;
        }
    }
    panic!("no file vanished during any of the backups: the deleter was too slow to test anything");
}

// ------------------------------------------------------------------------------------------------------------
// Issue 8: silent gaps (acceptance rows 8, 25, 26, 27)

/// `-t offsitee` (a typo of the configured target `offsite`) must not back up into a new `./offsitee`: a bare
/// word that is neither a configured target nor an existing directory is an error (exit 2) that names the
/// configured targets, the closest one, and how to ask for a new directory. Every command that takes `-t`.
#[test]
fn issue8_target_typo_is_an_error_and_writes_nothing() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let vol = c.volume("typo");
    std::fs::write(mountpoint(&vol).join("f"), b"x").unwrap();
    let offsite = env.dir().join("offsite-dir");
    let local = env.dir().join("local-dir");
    let cfg = env.config(
        "targets.toml",
        &format!(
            "[target.offsite]\ntype = \"local\"\npath = \"{}\"\n\n[target.local]\ntype = \"local\"\npath = \"{}\"\n",
            offsite.display(),
            local.display()
        ),
    );
    let commands: [&[&str]; 7] = [
        &["backup", "--only", &vol],
        &["list"],
        &["show", "latest"],
        &["verify", "--all"],
        &["prune", "--keep-last", "1", "--dry-run"],
        &["restore", "latest", "--dry-run"],
        &["backup", "--only", &vol, "-t", "offsite"],
    ];
    for cmd in commands {
        let mut args = vec!["-c", cfg.as_str()];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&["-t", "offsitee"]);
        let r = env.run(&args);
        r.expect_code(2).expect_clean_error();
        for want in [
            "offsitee",
            "did you mean `offsite`",
            "local, offsite",
            "./offsitee",
            "file://",
        ] {
            assert!(r.stderr.contains(want), "missing `{want}`:\n{}", r.stderr);
        }
    }
    let left: Vec<_> = std::fs::read_dir(&env.cwd)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "created in the working dir: {left:?}");
    assert!(!offsite.exists() && !local.exists(), "a target was written");

    // A bare word naming an existing directory, `./name`, `file://name` and configured names still work.
    std::fs::create_dir(env.cwd.join("existing")).unwrap();
    for t in ["existing", "./fresh", "file://other", "offsite"] {
        env.run(&["-c", &cfg, "backup", "--only", &vol, "-t", t])
            .expect_code(0);
    }
    for d in ["existing", "fresh", "other"] {
        assert_eq!(manifests(&env.cwd.join(d)).len(), 1, "{d}");
    }
    assert_eq!(manifests(&offsite).len(), 1);
}

/// Row 25: the target lock is keyed by the canonical target, not by its spelling. While a run holds
/// `<tmp>/backups`, `<tmp>/backups/`, `<tmp>/./backups`, a symlink to it, `../backups` from the working
/// directory and `file://<tmp>/backups` are all refused (backup and prune), naming the holder.
#[test]
fn issue8_lock_is_keyed_by_the_canonical_target_not_its_spelling() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    let s = slow_setup(&mut c, &env);
    let small = c.volume("small");
    let link = env.dir().join("link-to-backups");
    std::os::unix::fs::symlink(&env.target, &link).unwrap();
    let p = start_slow(&env, &s);

    let t = env.target_str();
    let spellings = [
        format!("{t}/"),
        format!("{}/./backups", env.dir().display()),
        format!("{}/cwd/../backups", env.dir().display()),
        link.display().to_string(),
        "../backups".to_string(),
        format!("file://{t}"),
    ];
    for sp in &spellings {
        let r = env.run(&["backup", "--only", &small, "-t", sp]);
        r.expect_code(2).expect_clean_error();
        assert!(
            r.stderr.contains("another voltar run")
                && r.stderr.contains(&format!("pid {}", p.pid())),
            "{sp} got past the lock:\n{}",
            r.stderr
        );
    }
    let r = env.run(&["prune", "--keep-last", "1", "-t", &spellings[3]]);
    r.expect_code(2);
    assert!(r.stderr.contains("another voltar run"), "{}", r.stderr);
    assert_eq!(state(&s.web), "paused", "the first run is undisturbed");

    p.signal(libc::SIGTERM);
    let (code, _, stderr) = p.wait_output(Duration::from_secs(30));
    assert_eq!(code, 143, "{stderr}");
    assert!(
        manifests(&env.target).is_empty(),
        "no spelling wrote a backup"
    );
    // Once released, every spelling works.
    env.run(&["backup", "--only", &small, "-t", &spellings[3]])
        .expect_code(0);
    assert_eq!(manifests(&env.target).len(), 1);
}

/// Row 27: two runs over the same volume (two targets, so the target lock does not serialise them) never share
/// a pause. The second starts while the first holds the `voltar.quiesce=pause` container; it must not take that
/// pause for the user's: it waits for the first to resume the container, pauses it itself, and both manifests
/// record the container's downtime. The container ends running, paused exactly twice.
#[test]
fn issue8_two_runs_never_share_a_pause() {
    require_docker!();
    let mut c = Cleanup::default();
    let env = Env::new();
    // Like `slow_setup`, smaller: the first run holds the pause for some seconds, long enough for the second to
    // start and plan meanwhile.
    let volume = c.volume("shared");
    fill_slowly_compressible(&volume, 2, 4);
    let web = idle(
        &mut c,
        "sharedweb",
        &[
            "--label",
            "voltar.quiesce=pause",
            "-v",
            &format!("{volume}:/data"),
        ],
    );
    let config = env.config(
        "slow.toml",
        "[archive]\nzstd-level = 19\nzstd-threads = 1\n",
    );
    let s = Slow {
        volume,
        web,
        config,
    };
    let flusher = idle(&mut c, "flush", &[]);
    let ev = Events::watch(&[&s.web], &flusher);
    // The second run only has to start while the first holds the pause; it need not be slow itself.
    let fast = env.config("fast.toml", "[archive]\nzstd-level = 1\n");
    let first = start_slow(&env, &s);
    let other = env.dir().join("other-target");
    let second = env
        .cmd(&[
            "-c",
            &fast,
            "--json",
            "backup",
            "--only",
            &s.volume,
            "-t",
            other.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let second = Run::from(&["backup", "(second)"], second);
    assert!(
        second.stderr.contains("held by another voltar run"),
        "the second run started while the first held the pause, and waited for it: {}",
        second.stderr
    );
    let (code, _, stderr) = first.wait_output(Duration::from_secs(300));
    assert_eq!(code, 0, "first run: {stderr}");
    second.expect_code(0);

    for (which, target) in [("first", &env.target), ("second", &other)] {
        let (_, m) = only_manifest(target);
        let r = container_record(source(&m, &s.volume), &s.web);
        assert_eq!(r["action"], "pause", "{which}: {r:#}");
        assert!(
            r["downtime-ms"].as_u64().unwrap() > 0,
            "{which} run recorded no downtime: it took the other run's pause for the user's: {r:#}"
        );
    }
    assert_eq!(
        ev.actions(&s.web),
        ["pause", "unpause", "pause", "unpause"],
        "one pause per run, one after the other"
    );
    assert_eq!(state(&s.web), "running");
}
