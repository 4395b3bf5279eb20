//! Issue 8, "Frozen containers" — acceptance row 23 (and 20): a container's downtime is bounded by reading its own
//! volume at local speed. A dead, hung or unauthorised target never extends a pause: targets are checked before
//! anything is quiesced, a target that failed once is skipped by the later sources, a writer that falls behind
//! while containers are held is fed from a spool file after they are resumed, and `[quiesce] max-downtime` caps a
//! slow read.
//!
//! Everything runs through the real binary against the real Docker Engine and real S3 servers (private moto
//! servers that the tests kill, freeze or make check credentials; a TCP socket that accepts and never answers).
//! Pauses are measured from the engine's own event stream (`docker events`, exact times), subscribed to before
//! each run: no sampling gap can hide a short pause.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::s3::{random_file, World};
use crate::support::{self, docker, free_port, source, target, Cleanup, Ev, Out, PrivateS3, Tmpfs};

// -------------------------------------------------------------------------------------------------------------
// Harness.

/// Slack on top of a source's read time that a pause may last: the pause and unpause API calls, the journal's
/// fsyncs, and a busy 2-core machine.
const SLACK: Duration = Duration::from_secs(3);

/// Retry deadline given to the S3 targets: long, so that a pause that waits for it stands out from one that
/// does not.
const DEADLINE: &str = "30s";

/// A streamed `docker events` subscription for some containers, started before the run under test (the engine's
/// replay buffer is small: a `--since` query after the fact could miss events while other tests run).
pub(crate) struct Watch {
    child: Child,
    seen: Arc<Mutex<Vec<Ev>>>,
}

impl Watch {
    pub(crate) fn start(containers: &[&str]) -> Watch {
        // From now on, to the nanosecond: earlier runs of the same test (the baseline reads) must not show up.
        let (child, seen) = support::stream_events(containers);
        let w = Watch { child, seen };
        // Live once our own marker comes through.
        for c in containers {
            w.flush(c);
        }
        w
    }

    /// Wait until every event that happened before this call has been received: send a harmless signal
    /// (SIGWINCH, ignored by `sleep`) to a running `container` and wait for its `kill` event.
    fn flush(&self, container: &str) {
        let kills = || {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.container == container && e.action == "kill")
                .count()
        };
        let before = kills();
        docker(&["kill", "-s", "WINCH", container]);
        let start = Instant::now();
        while kills() <= before {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the docker events stream did not deliver the marker"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Actions that change a container's state (pause, unpause, stop, die, start), in order, after a flush.
    pub(crate) fn touched(&self, container: &str) -> Vec<Ev> {
        self.flush(container);
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.container == container)
            .filter(|e| {
                matches!(
                    e.action.as_str(),
                    "pause" | "unpause" | "stop" | "die" | "start"
                )
            })
            .cloned()
            .collect()
    }

    /// How long each pause of `container` lasted (a pause without its unpause fails the test).
    pub(crate) fn pauses(&self, container: &str) -> Vec<Duration> {
        let evs = self.touched(container);
        let mut out = Vec::new();
        let mut since: Option<i128> = None;
        for e in &evs {
            match e.action.as_str() {
                "pause" => since = Some(e.nanos),
                "unpause" => {
                    let from = since.take().expect("unpause without pause");
                    out.push(Duration::from_nanos((e.nanos - from).max(0) as u64));
                }
                _ => {}
            }
        }
        assert!(since.is_none(), "{container} was left paused: {evs:?}");
        out
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Only the `docker events` process this test started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private moto server started with extra environment (e.g. one that checks access keys).
fn moto_with_env(env: &[(&str, &str)]) -> Option<PrivateS3> {
    PrivateS3::start_with_env(free_port(), env)
}

/// A running container of the test image that mounts `vol` read-write and asks to be paused while it is read.
fn paused_app(c: &mut Cleanup, tag: &str, vol: &str) -> String {
    c.run(
        tag,
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.quiesce=pause",
        ],
    )
}

/// Start `voltar` with `args` in the background.
fn spawn(w: &World, args: &[&str]) -> Child {
    let mut cmd = w.cmd();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().expect("start voltar")
}

fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

/// The report of source `name` in a `backup --json` run.
/// How long reading `vol` takes at local speed with `archive` settings (a TOML `[archive]` section or ""):
/// the reference for how long a pause may last. Measured by a backup of it to a local directory.
pub(crate) fn local_read_time(w: &World, vol: &str, archive: &str) -> Duration {
    let cfg = w.config(&format!("baseline-{vol}.toml"), archive);
    let dir = w.path(&format!("baseline-{vol}"));
    let out = crate::s3::run(
        w.cmd(),
        &[
            "--json",
            "-c",
            cfg.to_str().unwrap(),
            "backup",
            "--only",
            vol,
            "-t",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "baseline: {out:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    Duration::from_millis(source(&json(&out), vol)["read-ms"].as_u64().unwrap())
}

/// After a run whose S3 leg failed while the server was frozen until the run ended (`cfg`, S3 target `name` at
/// `prefix`): no object was stored; voltar could not confirm the abort of the archive's multipart upload and says
/// so, naming the remedy. Its abort request waits in the frozen server's queue and may or may not land once the
/// server thaws — moto answers it 500 when a queued part of the same upload is handled at the same moment (seen
/// in CI), and a real server that is partitioned away never sees it. The remedy voltar names, `voltar prune`
/// (incomplete uploads older than `incomplete-grace`, here 0s), then leaves nothing on S3.
pub(crate) fn assert_unconfirmed_abort_is_pruned(
    w: &World,
    cfg: &Path,
    name: &str,
    prefix: &str,
    out: &Out,
) {
    let store = w.store(prefix);
    let objs = w.block(crate::s3::keys(&store));
    assert!(
        objs.is_empty(),
        "objects stored on the failed target: {objs:?}"
    );
    assert!(
        out.stderr
            .contains("could not confirm the abort of a multipart upload")
            && out.stderr.contains("voltar prune"),
        "no word of the unconfirmed abort: {out:?}"
    );
    let text = std::fs::read_to_string(cfg).unwrap();
    let prune_cfg = w.config(
        &format!("prune-{name}.toml"),
        &format!("{text}\n[retention]\nincomplete-grace = \"0s\"\n"),
    );
    let p = crate::s3::run(
        w.cmd(),
        &[
            "-c",
            prune_cfg.to_str().unwrap(),
            "prune",
            "-t",
            name,
            "--keep-last",
            "1",
        ],
    );
    assert_eq!(p.code, 0, "{p:?}");
    let ups = w.block(store.list_incomplete()).unwrap();
    let objs = w.block(crate::s3::keys(&store));
    assert!(
        ups.is_empty() && objs.is_empty(),
        "left on S3 after prune: uploads {ups:?}, objects {objs:?}; the run: {out:?}; the prune: {p:?}"
    );
}

/// Every pause of `container` lasted no longer than reading its volume at local speed (`read`, with half of it
/// again for a busy machine) plus [`SLACK`].
pub(crate) fn assert_pauses_bounded(watch: &Watch, container: &str, read: Duration, out: &Out) {
    let bound = read + read / 2 + SLACK;
    let pauses = watch.pauses(container);
    assert!(!pauses.is_empty(), "{container} was never paused: {out:?}");
    for p in &pauses {
        assert!(
            *p <= bound,
            "{container} was paused for {p:?}, reading its volume takes {read:?}: {out:?}"
        );
    }
}

/// Files left in a directory (none when it does not exist).
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until `store` shows the upload of an archive in progress (true), or the run ended first (false).
fn wait_for_upload(w: &World, prefix: &str, child: &mut Child) -> bool {
    let store = w.store(prefix);
    let start = Instant::now();
    loop {
        // Not the check's probe upload (started and aborted before anything is quiesced): the archive's.
        let ups = w.block(store.list_incomplete()).unwrap();
        if ups
            .iter()
            .any(|u| !u.key.starts_with(voltar::storage::CHECK_KEY_PREFIX))
        {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the backup never started a multipart upload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// -------------------------------------------------------------------------------------------------------------
// A target that dies during the upload.

/// Two volumes, each with a paused container, backed up to a local target and a private S3 server that is killed
/// while the first volume is uploaded. Each container is paused no longer than its own volume's read (the rest of
/// the dead leg's stream is spooled and fed to the writer after the resume); the second source skips the dead
/// target at once instead of waiting out its retry deadline again; the local target commits both; exit 1; no
/// spool file is left.
#[test]
fn a_killed_s3_server_does_not_extend_the_pause() {
    crate::require_docker!();
    let Some(server) = PrivateS3::start(free_port()) else {
        return;
    };
    let w = World::new(&server.endpoint());
    let mut c = Cleanup::default();
    let (va, vb) = (c.volume("killed-a"), c.volume("killed-b"));
    random_file(&support::mountpoint(&va).join("random.bin"), 64 << 20);
    random_file(&support::mountpoint(&vb).join("random.bin"), 8 << 20);
    let (app_a, app_b) = (
        paused_app(&mut c, "killed-app-a", &va),
        paused_app(&mut c, "killed-app-b", &vb),
    );
    // zstd level 12 makes reading 64 MiB of random data take a few seconds: the kill lands mid-read.
    let archive = "[archive]\nzstd-level = 12\n";
    let (read_a, read_b) = (
        local_read_time(&w, &va, archive),
        local_read_time(&w, &vb, archive),
    );
    let local = w.path("local-backups");
    let cfg = w.config(
        "voltar.toml",
        &format!(
            "{archive}[target.local]\ntype = \"local\"\npath = \"{}\"\n{}",
            local.display(),
            w.s3_target_toml(
                "offsite",
                "killed",
                &format!(
                    "part-size = \"5MiB\"\nparallel-parts = 1\nretry-deadline = \"{DEADLINE}\""
                ),
            )
        ),
    );
    let watch = Watch::start(&[&app_a, &app_b]);
    let started = Instant::now();
    let mut child = spawn(
        &w,
        &[
            "--json",
            "-c",
            cfg.to_str().unwrap(),
            "backup",
            "--only",
            &va,
            "--only",
            &vb,
        ],
    );
    assert!(
        wait_for_upload(&w, "killed", &mut child),
        "the run ended before uploading"
    );
    server.signal(libc::SIGKILL);
    let out = Out::from(child.wait_with_output().unwrap());
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{out:?}");
    let r = json(&out);
    // The kill is meant to land while `va` (the large one) is read: it must be the first source read.
    assert_eq!(
        r["sources"][0]["name"],
        va.as_str(),
        "the sources were not read in the order this test relies on: {out:?}"
    );

    assert_pauses_bounded(&watch, &app_a, read_a, &out);
    assert_pauses_bounded(&watch, &app_b, read_b, &out);
    assert_eq!(support::state(&app_a), "running");
    assert_eq!(support::state(&app_b), "running");

    // The first source spooled what the dead target could not take while its container was held.
    let a = source(&r, &va);
    assert!(
        a["spooled"]["offsite"].as_u64().unwrap_or(0) > 0,
        "nothing was spooled: {out:?}"
    );
    assert!(a["target-errors"]["offsite"].is_string(), "{out:?}");
    // The second source did not try the dead target again.
    let b = source(&r, &vb);
    let why = b["target-errors"]["offsite"].as_str().unwrap_or("");
    assert!(why.contains("failed earlier"), "{out:?}");
    assert!(
        took < Duration::from_secs(2 * 30),
        "the run took {took:?}: the second source waited for the dead target again"
    );

    assert_eq!(
        target(&r, &local.display().to_string())["committed"],
        true,
        "{out:?}"
    );
    assert_eq!(target(&r, "s3://")["committed"], false, "{out:?}");
    assert!(
        files_in(&w.path("state/spool")).is_empty(),
        "spool files left: {:?}",
        files_in(&w.path("state/spool"))
    );
    let v = crate::s3::run(w.cmd(), &["verify", "-t", local.to_str().unwrap()]);
    assert_eq!(v.code, 0, "{v:?}");
}

// -------------------------------------------------------------------------------------------------------------
// Targets that fail the check before anything is quiesced.

/// An S3 endpoint that accepts connections and never answers (a listening socket nobody reads): the target
/// fails its check within seconds, no container is touched, and the run is fatal (exit 2, one line naming the
/// target).
#[test]
fn a_hung_endpoint_is_caught_before_any_container_is_paused() {
    crate::require_docker!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let w = World::without_bucket(&endpoint);
    let mut c = Cleanup::default();
    let vol = c.volume("hung");
    random_file(&support::mountpoint(&vol).join("random.bin"), 16 << 20);
    let app = paused_app(&mut c, "hung-app", &vol);
    let cfg = w.config(
        "voltar.toml",
        &w.s3_target_toml(
            "offsite",
            "hung",
            &format!("part-size = \"5MiB\"\nretry-deadline = \"{DEADLINE}\""),
        ),
    );
    let watch = Watch::start(&[&app]);
    let started = Instant::now();
    let out = crate::s3::run(
        w.cmd(),
        &["-c", cfg.to_str().unwrap(), "backup", "--only", &vol],
    );
    let took = started.elapsed();
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(watch.touched(&app).len(), 0, "container touched: {out:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {out:?}");
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {out:?}");
    assert!(line.contains("offsite"), "names the target: {out:?}");
    assert!(line.contains("no answer"), "says why: {out:?}");
    drop(listener);
}

/// A server that checks access keys (moto with authentication on from the first request) and a target with
/// keys it does not know; then a target with no credentials at all. Each run is fatal before any container is
/// touched, and says "credentials" and which target — not "cannot reach".
#[test]
fn wrong_or_missing_credentials_touch_no_container_and_say_credentials() {
    crate::require_docker!();
    let Some(server) = moto_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]) else {
        return;
    };
    let w = World::without_bucket(&server.endpoint());
    let mut c = Cleanup::default();
    let vol = c.volume("creds");
    random_file(&support::mountpoint(&vol).join("random.bin"), 8 << 20);
    let app = paused_app(&mut c, "creds-app", &vol);
    let cfg = w.config(
        "voltar.toml",
        &w.s3_target_toml(
            "offsite",
            "creds",
            &format!("part-size = \"5MiB\"\nretry-deadline = \"{DEADLINE}\""),
        ),
    );
    let watch = Watch::start(&[&app]);
    let started = Instant::now();
    let out = crate::s3::run(
        w.cmd(),
        &["-c", cfg.to_str().unwrap(), "backup", "--only", &vol],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "{out:?}");
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {out:?}");
    assert!(line.contains("credentials"), "{out:?}");
    assert!(line.contains("offsite"), "{out:?}");
    assert!(!line.contains("cannot reach"), "{out:?}");

    // No credentials anywhere (no key files, no environment, no profile, instance metadata off).
    let mut cmd = w.cmd();
    cmd.env("AWS_ENDPOINT_URL", &w.endpoint)
        .env("AWS_REGION", "us-east-1");
    let url = w.url("creds");
    let out = crate::s3::run(cmd, &["backup", "--only", &vol, "-t", &url]);
    assert_eq!(out.code, 2, "{out:?}");
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {out:?}");
    assert!(line.contains("credentials"), "{out:?}");
    assert!(line.contains(&url), "{out:?}");
    assert!(!line.contains("cannot reach"), "{out:?}");

    assert_eq!(watch.touched(&app).len(), 0, "container touched");
    drop(server);
}

/// A dead S3 endpoint (nothing listens) and, in a second run, one whose host does not resolve, each next to a
/// local target: the S3 target fails its check and is skipped for the whole run (the summary says why), the
/// local target commits, exit 1, and the container is paused only while its volume is read.
#[test]
fn a_dead_s3_target_next_to_a_local_target_is_skipped() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("dead");
    random_file(&support::mountpoint(&vol).join("random.bin"), 16 << 20);
    let app = paused_app(&mut c, "dead-app", &vol);
    let read = local_read_time(&World::without_bucket("http://127.0.0.1:9"), &vol, "");
    for (endpoint, why) in [
        (format!("http://127.0.0.1:{}", free_port()), "cannot reach"),
        (
            "http://voltar-test-nowhere.invalid:9000".to_string(),
            "does not resolve",
        ),
    ] {
        let w = World::without_bucket(&endpoint);
        let local = w.path("local-backups");
        let cfg = w.config(
            "voltar.toml",
            &format!(
                "[target.local]\ntype = \"local\"\npath = \"{}\"\n{}",
                local.display(),
                w.s3_target_toml(
                    "offsite",
                    "dead",
                    &format!("part-size = \"5MiB\"\nretry-deadline = \"{DEADLINE}\""),
                )
            ),
        );
        let watch = Watch::start(&[&app]);
        let cfg = cfg.to_str().unwrap();
        let out = crate::s3::run(w.cmd(), &["--json", "-c", cfg, "backup", "--only", &vol]);
        assert_eq!(out.code, 1, "{endpoint}: {out:?}");
        let r = json(&out);
        assert_pauses_bounded(&watch, &app, read, &out);
        assert_eq!(
            target(&r, &local.display().to_string())["committed"],
            true,
            "{out:?}"
        );
        let s3 = target(&r, "s3://");
        assert_eq!(s3["committed"], false, "{out:?}");
        let err = s3["error"].as_str().unwrap_or("");
        assert!(err.contains(why), "{endpoint}: {out:?}");
        assert!(err.contains("check"), "{endpoint}: {out:?}");
        // And in the human summary.
        let text = crate::s3::run(w.cmd(), &["-c", cfg, "backup", "--only", &vol]);
        assert_eq!(text.code, 1, "{text:?}");
        let line = text
            .stdout
            .lines()
            .find(|l| l.starts_with("target s3://"))
            .unwrap_or_else(|| panic!("{text:?}"));
        assert!(
            line.contains("NOT committed") && line.contains(why),
            "{text:?}"
        );
    }
    assert_eq!(support::state(&app), "running");
}

// -------------------------------------------------------------------------------------------------------------
// The hard cap.

/// `[quiesce] max-downtime = "1s"` and a read that takes far longer (zstd level 19 on random data): the source
/// is aborted (nothing stored, the error names the cap and the key), the container is resumed at the cap, and
/// the local target holds no archive and no temp file.
#[test]
fn max_downtime_aborts_a_slow_read_and_resumes_the_container() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("cap");
    let src = support::mountpoint(&vol);
    for i in 0..12 {
        random_file(&src.join(format!("part{i}.bin")), 1 << 20);
    }
    let app = paused_app(&mut c, "cap-app", &vol);
    let w = World::without_bucket("http://127.0.0.1:9");
    let local = w.path("local-backups");
    let cfg = w.config(
        "voltar.toml",
        &format!(
            "[quiesce]\nmax-downtime = \"1s\"\n[archive]\nzstd-level = 19\n[target.local]\ntype = \"local\"\npath = \"{}\"\n",
            local.display()
        ),
    );
    let watch = Watch::start(&[&app]);
    let out = crate::s3::run(
        w.cmd(),
        &[
            "--json",
            "-c",
            cfg.to_str().unwrap(),
            "backup",
            "--only",
            &vol,
        ],
    );
    assert_eq!(out.code, 1, "{out:?}");
    let r = json(&out);
    let s = source(&r, &vol);
    assert_eq!(s["status"], "failed", "{out:?}");
    let err = s["error"].as_str().unwrap_or("");
    assert!(err.contains("max-downtime"), "{out:?}");
    let pauses = watch.pauses(&app);
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert!(
        pauses[0] < Duration::from_secs(1) + SLACK,
        "paused {:?}",
        pauses[0]
    );
    assert_eq!(support::state(&app), "running");
    assert_eq!(
        target(&r, &local.display().to_string())["committed"],
        false,
        "{out:?}"
    );
    let mut left = Vec::new();
    for e in walkdir::WalkDir::new(&local)
        .into_iter()
        .filter_map(Result::ok)
    {
        if e.file_type().is_file() {
            left.push(e.path().display().to_string());
        }
    }
    assert!(left.is_empty(), "left in the local target: {left:?}");
}

// -------------------------------------------------------------------------------------------------------------
// The spool.

/// The spool directory is a 48 MiB tmpfs and the S3 server freezes mid-upload while a 96 MiB volume is read:
/// the spool of that leg would fill the disk, so that leg fails (and says so) while the local target commits;
/// the container is still paused only for the read, nothing is left in the spool directory, and no multipart
/// upload is left once the server thaws.
#[test]
fn a_spool_that_would_fill_the_disk_fails_only_its_leg() {
    crate::require_docker!();
    let Some(server) = PrivateS3::start(free_port()) else {
        return;
    };
    let w = World::new(&server.endpoint());
    let spool = w.path("spool");
    let _tmpfs = Tmpfs::mount(&spool, "48m");
    let mut c = Cleanup::default();
    let vol = c.volume("full");
    random_file(&support::mountpoint(&vol).join("random.bin"), 96 << 20);
    let app = paused_app(&mut c, "full-app", &vol);
    let archive = "[archive]\nzstd-level = 12\n";
    let read = local_read_time(&w, &vol, archive);
    let local = w.path("local-backups");
    let cfg = w.config(
        "voltar.toml",
        &format!(
            "spool-dir = \"{}\"\n{archive}[target.local]\ntype = \"local\"\npath = \"{}\"\n{}",
            spool.display(),
            local.display(),
            w.s3_target_toml(
                "offsite",
                "full",
                "part-size = \"5MiB\"\nparallel-parts = 1\nretry-deadline = \"5s\"",
            )
        ),
    );
    let watch = Watch::start(&[&app]);
    let mut child = spawn(
        &w,
        &[
            "--json",
            "-c",
            cfg.to_str().unwrap(),
            "backup",
            "--only",
            &vol,
        ],
    );
    assert!(
        wait_for_upload(&w, "full", &mut child),
        "the run ended before uploading"
    );
    server.signal(libc::SIGSTOP);
    let out = Out::from(child.wait_with_output().unwrap());
    server.signal(libc::SIGCONT);
    assert_eq!(out.code, 1, "{out:?}");
    let r = json(&out);
    assert_pauses_bounded(&watch, &app, read, &out);
    let s = source(&r, &vol);
    let why = s["target-errors"]["offsite"].as_str().unwrap_or("");
    assert!(why.contains("spool"), "{out:?}");
    assert!(why.contains(&spool.display().to_string()), "{out:?}");
    assert_eq!(
        target(&r, &local.display().to_string())["committed"],
        true,
        "{out:?}"
    );
    assert_eq!(target(&r, "s3://")["committed"], false, "{out:?}");
    assert!(files_in(&spool).is_empty(), "{:?}", files_in(&spool));
    assert_unconfirmed_abort_is_pruned(&w, &cfg, "offsite", "full", &out);
    drop(server);
}

/// Spool files left by a killed run (recognised by name under the spool directory) are removed by
/// `voltar recover` and by the next backup, each saying so; a spool file of a live process is left alone.
#[test]
fn leftover_spool_files_are_removed_by_recover_and_the_next_run() {
    crate::require_docker!();
    let w = World::without_bucket("http://127.0.0.1:9");
    let spool = w.path("state/spool");
    std::fs::create_dir_all(&spool).unwrap();
    // The pid of a process that has exited.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let plant = |n: u32| {
        let p = spool.join(format!(".voltar-spool-{dead_pid}-{n}"));
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        p
    };
    let live = spool.join(format!(".voltar-spool-{}-0", std::process::id()));
    std::fs::write(&live, b"in use").unwrap();

    let left = plant(1);
    let out = crate::s3::run(w.cmd(), &["recover"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!left.exists(), "{out:?}");
    assert!(out.stdout.contains("spool"), "{out:?}");
    assert!(live.exists(), "a live process's spool file was removed");

    let left = plant(2);
    let mut c = Cleanup::default();
    let vol = c.volume("leftover");
    std::fs::write(support::mountpoint(&vol).join("f"), "x").unwrap();
    let local = w.path("local-backups");
    let out = crate::s3::run(
        w.cmd(),
        &["backup", "--only", &vol, "-t", local.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!left.exists(), "{out:?}");
    assert!(out.all().contains("spool"), "{out:?}");
    assert!(live.exists());
}
