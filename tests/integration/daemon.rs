//! Issue 12: `voltar daemon` against the real engine — runs happen on a seconds-level schedule and write
//! backups; a slot that comes while a run is still going is skipped, not stacked; SIGTERM mid-run leaves the
//! containers running and no manifest; SIGHUP with a broken config keeps the old schedule; /healthz flips to 503
//! when a run fails and back to 200 when the next succeeds; /metrics parses with a Prometheus text parser and
//! holds the series. Each daemon listens on a free loopback port of its own.
//!
//! A run is made slow with a container that ignores SIGTERM (busybox `sleep` as PID 1) under `quiesce = stop`:
//! stopping it waits out its `voltar.stop-timeout`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::require_docker;
use crate::support::{self, Cleanup};

/// A `voltar daemon --json` child: its stdout lines as JSON, in order.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    stderr: PathBuf,
    port: u16,
}

impl Daemon {
    fn start(config: &Path, dir: &Path, port: u16) -> Daemon {
        let stderr = dir.join("daemon.stderr");
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("voltar"))
            .args(["--json", "-c"])
            .arg(config)
            .arg("daemon")
            .env_remove("VOLTAR_CONFIG")
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: vec![],
            stderr,
            port,
        }
    }

    fn said(&self) -> String {
        let mut s: String = self.seen.iter().map(|v| format!("{v}\n")).collect();
        s.push_str("--- stderr\n");
        s.push_str(&std::fs::read_to_string(&self.stderr).unwrap_or_default());
        s
    }

    /// The next line for which `pred` holds (lines before it are kept in `seen`), within `secs`.
    #[track_caller]
    fn wait_for(&mut self, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {secs} s; the daemon said:\n{}",
                    self.said()
                ),
            }
        }
    }

    #[track_caller]
    fn event(&mut self, event: &str, secs: u64) -> Value {
        self.wait_for(event, secs, |v| v["event"] == event)
    }

    #[track_caller]
    fn finished(&mut self, status: &str, secs: u64) -> Value {
        self.wait_for(&format!("a run {status}"), secs, |v| {
            v["event"] == "finished" && v["status"] == status
        })
    }

    fn signal(&self, sig: i32) {
        // Only the process this test started, by its id.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then its exit code and how long it took.
    fn stop(&mut self) -> (i32, Duration) {
        let sent = Instant::now();
        self.signal(libc::SIGTERM);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // The rest of what it said.
                while let Ok(v) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(v);
                }
                return (s.code().unwrap_or(-1), sent.elapsed());
            }
            if sent.elapsed() > Duration::from_secs(60) {
                panic!("still running 60 s after SIGTERM:\n{}", self.said());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the daemon's listener: status code and body.
    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let (code, head, body) = http_get_with(port, path, "");
    if path == "/metrics" {
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
    }
    (code, body)
}

/// `GET path` with extra header lines (each ending in CRLF): status code, head, body.
fn http_get_with(port: u16, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (code, head.to_string(), body.to_string())
}

/// A config in `dir`: state in `dir/state`, one local target `bk` at `target`, the given jobs and extra sections.
fn write_config(dir: &Path, port: u16, target: &Path, rest: &str) -> PathBuf {
    let p = dir.join("voltar.toml");
    std::fs::write(
        &p,
        format!(
            "state-dir = \"{}\"\n[daemon]\nlisten = \"127.0.0.1:{port}\"\n[target.bk]\ntype = \"local\"\npath = \"{}\"\n{rest}",
            dir.join("state").display(),
            target.display()
        ),
    )
    .unwrap();
    p
}

/// The backup ids in a local target that have a manifest.
fn committed(target: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(target)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("manifest.json").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn voltar(config: &Path, args: &[&str]) -> support::Out {
    Command::new(assert_cmd::cargo::cargo_bin("voltar"))
        .arg("-c")
        .arg(config)
        .args(args)
        .env_remove("VOLTAR_CONFIG")
        .output()
        .unwrap()
        .into()
}

/// The value of the sample `metric` whose labels include `labels`.
#[track_caller]
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {metric}{labels:?} in the scrape"));
    match &s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{metric} is {other:?}"),
    }
}

#[test]
fn issue12_daemon_runs_on_schedule_writes_backups_and_serves_metrics_and_status() {
    require_docker!();
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("dmn");
    std::fs::write(
        support::mountpoint(&vol).join("data.txt"),
        vec![b'x'; 100_000],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bk");
    let port = support::free_port();
    let cfg = write_config(
        dir.path(),
        port,
        &target,
        &format!("[selection]\ninclude = [\"{vol}\"]\n[job.often]\nschedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\n"),
    );
    let mut d = Daemon::start(&cfg, dir.path(), port);
    d.event("listening", 60);
    let sched = d.event("scheduled", 30);
    assert_eq!(sched["job"], "often");
    assert_eq!(sched["next"].as_array().unwrap().len(), 3, "next 3 runs");
    // Every job and target series exists from the start (the first run may be going already).
    let (code, body) = d.get("/metrics");
    assert_eq!(code, 200);
    let before = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    for m in [
        "voltar_backup_attempts_total",
        "voltar_backup_failures_total",
        "voltar_backup_skipped_slots_total",
        "voltar_backup_next_run_timestamp_seconds",
    ] {
        sample(&before, m, &[("job", "often")]);
    }
    for m in [
        "voltar_backup_last_success_timestamp_seconds",
        "voltar_backup_last_status",
    ] {
        sample(&before, m, &[("job", "often"), ("target", "bk")]);
    }
    for _ in 0..2 {
        let done = d.finished("ok", 60);
        assert_eq!(done["job"], "often");
    }
    let ids = committed(&target);
    assert!(ids.len() >= 2, "two runs, two backups: {ids:?}");

    let (code, body) = d.get("/metrics");
    assert_eq!(code, 200);
    let s = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    let job = [("job", "often")];
    let jt = [("job", "often"), ("target", "bk")];
    let last = sample(&s, "voltar_backup_last_success_timestamp_seconds", &jt);
    assert!(
        now - last < 60.0 && last <= now + 1.0,
        "last success {last}, now {now}"
    );
    assert_eq!(sample(&s, "voltar_backup_last_status", &jt), 1.0);
    assert!(sample(&s, "voltar_backup_attempts_total", &job) >= 2.0);
    assert_eq!(sample(&s, "voltar_backup_failures_total", &job), 0.0);
    assert_eq!(sample(&s, "voltar_backup_skipped_slots_total", &job), 0.0);
    assert!(
        sample(
            &s,
            "voltar_backup_bytes_read_total",
            &[("job", "often"), ("source", vol.as_str())]
        ) >= 200_000.0
    );
    assert!(
        sample(
            &s,
            "voltar_backup_stored_bytes",
            &[("job", "often"), ("target", "bk"), ("source", vol.as_str())]
        ) > 0.0
    );
    assert_eq!(
        sample(
            &s,
            "voltar_container_downtime_seconds",
            &[("job", "often"), ("source", vol.as_str())]
        ),
        0.0,
        "no container uses the volume"
    );
    assert!(sample(&s, "voltar_backup_next_run_timestamp_seconds", &job) >= now - 2.0);
    assert!(sample(&s, "voltar_volumes_unprotected", &[]) >= 0.0);
    assert_eq!(sample(&s, "voltar_build_info", &[]), 1.0);
    let hist = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "voltar_backup_duration_seconds" && x.labels.get("job") == Some("often")
        })
        .expect("duration histogram");
    match &hist.value {
        prometheus_parse::Value::Histogram(b) => {
            let inf = b.iter().find(|c| c.less_than.is_infinite()).unwrap();
            assert!(inf.count >= 2.0, "{b:?}");
        }
        other => panic!("duration is {other:?}"),
    }

    // Prometheus asks for OpenMetrics and gets it.
    let (code, head, body) = http_get_with(
        port,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    // status reads the daemon's state.
    let st = voltar(&cfg, &["status", "--json"]);
    assert_eq!(st.code, 0, "{st:?}");
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["from"], "daemon-state", "{v:#}");
    let t = &v["jobs"][0]["targets"][0];
    assert_eq!(
        (t["target"].as_str(), t["result"].as_str()),
        (Some("bk"), Some("ok")),
        "{v:#}"
    );
    assert!(t["stored-bytes"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["jobs"][0]["next-run"].is_string(), "{v:#}");
    assert!(
        !v["unprotected-volumes"]
            .as_array()
            .unwrap()
            .contains(&Value::String(vol.clone())),
        "{vol} is covered: {v:#}"
    );
    let (code, took) = d.stop();
    assert_eq!(code, 0, "a clean stop exits 0:\n{}", d.said());
    assert!(took < Duration::from_secs(30), "{took:?}");

    // Without the state file, status reads the target's manifests, and says so.
    std::fs::remove_file(dir.path().join("state/daemon-state.json")).unwrap();
    let st = voltar(&cfg, &["status"]);
    assert_eq!(st.code, 0, "{st:?}");
    assert!(st.stdout.contains("from the targets' manifests"), "{st:?}");
    assert!(st.stdout.contains(" ok "), "{st:?}");
}

#[test]
fn issue12_a_slot_during_a_slow_run_is_skipped_not_stacked() {
    require_docker!();
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("slow");
    // Ignores SIGTERM: each stop waits out its 3 s timeout, so every run takes over 3 s.
    let c = cleanup.run(
        "slow",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.quiesce=stop",
            "--label",
            "voltar.stop-timeout=3s",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bk");
    let port = support::free_port();
    let cfg = write_config(
        dir.path(),
        port,
        &target,
        &format!("[selection]\ninclude = [\"{vol}\"]\n[job.slow]\nschedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\n"),
    );
    let mut d = Daemon::start(&cfg, dir.path(), port);
    d.finished("ok", 90);
    d.event("skipped", 30);
    d.finished("ok", 60);
    // Counted in the metrics too.
    let (_, body) = d.get("/metrics");
    let s = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(sample(&s, "voltar_backup_skipped_slots_total", &[("job", "slow")]) >= 1.0);
    assert!(
        sample(
            &s,
            "voltar_container_downtime_seconds",
            &[("job", "slow"), ("source", vol.as_str())]
        ) >= 2.0
    );
    let (code, _) = d.stop();
    assert_eq!(code, 0, "{}", d.said());
    // Never two runs at once: every start comes after the previous run's end.
    let mut going = false;
    for v in &d.seen {
        match v["event"].as_str() {
            Some("started") => {
                assert!(!going, "a run was stacked on a running one:\n{}", d.said());
                going = true;
            }
            Some("finished") => going = false,
            _ => {}
        }
    }
    assert_eq!(support::state(&c), "running");
}

#[test]
fn issue12_sigterm_mid_run_resumes_containers_commits_nothing_and_exits_0() {
    require_docker!();
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("term");
    let c = cleanup.run(
        "term",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.quiesce=stop",
            "--label",
            "voltar.stop-timeout=4s",
        ],
    );
    let (mut events, seen) = support::stream_events(&[c.as_str()]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bk");
    let port = support::free_port();
    let cfg = write_config(
        dir.path(),
        port,
        &target,
        &format!("[selection]\ninclude = [\"{vol}\"]\n[job.t]\nschedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\n"),
    );
    let mut d = Daemon::start(&cfg, dir.path(), port);
    d.event("started", 60);
    // The engine is stopping the container (it waits out the 4 s timeout): stop the daemon now.
    let kill_seen = Instant::now();
    loop {
        if seen.lock().unwrap().iter().any(|e| e.action == "kill") {
            break;
        }
        assert!(
            kill_seen.elapsed() < Duration::from_secs(30),
            "the container was never stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, took) = d.stop();
    assert_eq!(code, 0, "{}", d.said());
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(
        d.seen
            .iter()
            .any(|v| v["event"] == "finished" && v["status"] == "interrupted"),
        "{}",
        d.said()
    );
    assert_eq!(support::state(&c), "running", "{}", d.said());
    assert!(
        committed(&target).is_empty(),
        "no manifest after a stop: {:?}",
        committed(&target)
    );
    let _ = events.kill();
    let _ = events.wait();
    let actions: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.action.clone())
        .collect();
    assert!(
        actions.iter().any(|a| a == "die"),
        "it was stopped: {actions:?}"
    );
    assert_eq!(
        actions.last().map(String::as_str),
        Some("start"),
        "and started again: {actions:?}"
    );
}

#[test]
fn issue12_sighup_with_a_broken_config_keeps_the_old_schedule() {
    require_docker!();
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("hup");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bk");
    let port = support::free_port();
    let jobs = format!("[selection]\ninclude = [\"{vol}\"]\n");
    let cfg = write_config(
        dir.path(),
        port,
        &target,
        &format!("{jobs}[job.h]\nschedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\n"),
    );
    let good = std::fs::read_to_string(&cfg).unwrap();
    let mut d = Daemon::start(&cfg, dir.path(), port);
    d.finished("ok", 60);
    std::fs::write(&cfg, good.replace("*/2 * * * * *", "every two seconds")).unwrap();
    d.signal(libc::SIGHUP);
    let failed = d.event("reload-failed", 30);
    assert!(
        failed["error"].as_str().unwrap().contains("job.h.schedule"),
        "{failed}"
    );
    // The old schedule goes on.
    d.event("started", 30);
    d.finished("ok", 60);
    // A valid change takes effect for the next slot: once a year now.
    std::fs::write(&cfg, good.replace("*/2 * * * * *", "0 0 1 1 *")).unwrap();
    d.signal(libc::SIGHUP);
    d.event("reloaded", 30);
    let s = d.event("scheduled", 30);
    let next = s["next"][0].as_str().unwrap();
    assert!(next.ends_with("-01-01T00:00:00Z"), "{s}");
    let (code, _) = d.stop();
    assert_eq!(code, 0, "{}", d.said());
}

#[test]
fn issue12_healthz_turns_503_when_a_run_fails_and_200_when_the_next_succeeds() {
    require_docker!();
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("hz");
    let dir = tempfile::tempdir().unwrap();
    // The target's directory is a regular file: every run fails its target check.
    let target = dir.path().join("bk");
    std::fs::write(&target, b"not a directory").unwrap();
    let port = support::free_port();
    let cfg = write_config(
        dir.path(),
        port,
        &target,
        &format!("[selection]\ninclude = [\"{vol}\"]\n[job.hz]\nschedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\n"),
    );
    let mut d = Daemon::start(&cfg, dir.path(), port);
    d.event("listening", 60);
    // Healthy before its first slot.
    let (code, _) = d.get("/healthz");
    assert_eq!(code, 200);
    d.finished("failed", 60);
    let (code, body) = d.get("/healthz");
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["healthy"], false);
    assert!(v["problems"][0].as_str().unwrap().contains("job hz"), "{v}");
    let hc = voltar(&cfg, &["healthcheck"]);
    assert_eq!(hc.code, 1, "{hc:?}");
    assert!(hc.stderr.contains("job hz"), "{hc:?}");
    let (code, _) = d.get("/nothing");
    assert_eq!(code, 404);
    // Fixed: the next run succeeds, health is back.
    std::fs::remove_file(&target).unwrap();
    d.finished("ok", 60);
    let (code, body) = d.get("/healthz");
    assert_eq!(code, 200, "{body}");
    let hc = voltar(&cfg, &["healthcheck"]);
    assert_eq!(hc.code, 0, "{hc:?}");
    let (code, _) = d.stop();
    assert_eq!(code, 0, "{}", d.said());
    // Nothing listens any more: unhealthy, and it says why.
    let hc = voltar(&cfg, &["healthcheck"]);
    assert_eq!(hc.code, 1, "{hc:?}");
    assert!(hc.stderr.contains("nothing answers"), "{hc:?}");
}

#[test]
fn issue12_a_run_waits_for_a_target_another_voltar_holds_rather_than_failing() {
    require_docker!();
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("wait");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bk");
    let port = support::free_port();
    let cfg = write_config(
        dir.path(),
        port,
        &target,
        &format!("[selection]\ninclude = [\"{vol}\"]\n[job.w]\nschedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\n"),
    );
    // Another voltar run holds the target (as `voltar backup` does for its whole run).
    let config = voltar::config::Config::load(Some(&cfg)).unwrap();
    let held = voltar::lock::TargetLock::acquire(&config.state_dir, &config.targets["bk"]).unwrap();
    let mut d = Daemon::start(&cfg, dir.path(), port);
    let waiting = d.event("waiting", 60);
    assert_eq!(waiting["job"], "w");
    assert!(
        !d.seen.iter().any(|v| v["event"] == "finished"),
        "{}",
        d.said()
    );
    assert!(committed(&target).is_empty());
    drop(held);
    d.finished("ok", 60);
    assert!(!committed(&target).is_empty(), "{}", d.said());
    let (code, _) = d.stop();
    assert_eq!(code, 0, "{}", d.said());
}

#[test]
fn issue12_health_survives_a_restart() {
    require_docker!();
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("rst");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bk");
    std::fs::write(&target, b"not a directory").unwrap();
    let port = support::free_port();
    let jobs = format!("[selection]\ninclude = [\"{vol}\"]\n[job.r]\ntimezone = \"UTC\"\n");
    let cfg = write_config(
        dir.path(),
        port,
        &target,
        &format!("{jobs}schedule = \"*/2 * * * * *\"\n"),
    );
    let mut d = Daemon::start(&cfg, dir.path(), port);
    d.finished("failed", 60);
    let (code, _) = d.stop();
    assert_eq!(code, 0, "{}", d.said());
    // Restarted with a slot a year away: the failure it recorded is still the job's health.
    let port = support::free_port();
    let cfg = write_config(
        dir.path(),
        port,
        &target,
        &format!("{jobs}schedule = \"0 0 1 1 *\"\n"),
    );
    let mut d = Daemon::start(&cfg, dir.path(), port);
    d.event("listening", 60);
    let (code, body) = d.get("/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("job r: last run at"), "{body}");
    let (_, body) = d.get("/metrics");
    let s = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        sample(
            &s,
            "voltar_backup_last_status",
            &[("job", "r"), ("target", "bk")]
        ),
        0.0
    );
    let (code, _) = d.stop();
    assert_eq!(code, 0, "{}", d.said());
}

#[test]
fn issue12_two_jobs_sharing_a_target_never_run_at_once() {
    require_docker!();
    let mut cleanup = Cleanup::default();
    let va = cleanup.volume("sha");
    let vb = cleanup.volume("shb");
    // Job a's runs take over 3 s (a container that waits out its stop timeout).
    cleanup.run(
        "sha",
        &[
            "-v",
            &format!("{va}:/data"),
            "--label",
            "voltar.quiesce=stop",
            "--label",
            "voltar.stop-timeout=3s",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bk");
    let port = support::free_port();
    let cfg = write_config(
        dir.path(),
        port,
        &target,
        &format!(
            "[job.a]\nschedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\n[job.a.selection]\ninclude = [\"{va}\"]\n[job.b]\nschedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\n[job.b.selection]\ninclude = [\"{vb}\"]\n"
        ),
    );
    let mut d = Daemon::start(&cfg, dir.path(), port);
    d.event("waiting", 60);
    for job in ["a", "b"] {
        d.wait_for(&format!("job {job} ok"), 60, |v| {
            v["event"] == "finished" && v["status"] == "ok" && v["job"] == job
        });
    }
    let (code, _) = d.stop();
    assert_eq!(code, 0, "{}", d.said());
    assert!(
        !d.seen
            .iter()
            .any(|v| v["event"] == "finished" && v["status"] == "failed"),
        "a run failed instead of waiting:\n{}",
        d.said()
    );
    // The committed backups' run times never overlap.
    let mut spans: Vec<(String, String, String)> = committed(&target)
        .iter()
        .map(|id| {
            let m: Value = serde_json::from_slice(
                &std::fs::read(target.join(id).join("manifest.json")).unwrap(),
            )
            .unwrap();
            (
                m["started-at"].as_str().unwrap().to_string(),
                m["finished-at"].as_str().unwrap().to_string(),
                m["job"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    assert!(spans.len() >= 2, "{spans:?}");
    for w in spans.windows(2) {
        let (a, b) = (
            chrono::DateTime::parse_from_rfc3339(&w[0].1).unwrap(),
            chrono::DateTime::parse_from_rfc3339(&w[1].0).unwrap(),
        );
        assert!(a <= b, "runs overlap on one target: {w:?}");
    }
}

/// The daemon tells the same receivers as `voltar backup` (issue 12: notifications "for the daemon's runs"): the
/// job's healthchecks URL gets `/start` and then `/fail` for a run that failed, and the plain URL once a run
/// succeeds; a `[[notify]]` webhook on failure gets the run's JSON. A reload that changes the URL is followed.
#[test]
fn issue12_daemon_runs_ping_healthchecks_and_notify_receivers() {
    use crate::notify::{Answer, Http};
    require_docker!();
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("dn");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bk");
    std::fs::write(&target, b"not a directory: every run fails").unwrap();
    let hc = Http::start(Answer::Status(200));
    let hook = Http::start(Answer::Status(200));
    let port = support::free_port();
    let job = |hc_url: &str| {
        format!(
            "[selection]\ninclude = [\"{vol}\"]\n[[notify]]\nurl = \"{}\"\n[[notify]]\nurl = \"http://127.0.0.1:9/dead\"\non = [\"failure\", \"success\"]\n[job.dn]\nschedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\nhealthcheck-url = \"{hc_url}\"\n",
            hook.url("/hook")
        )
    };
    let cfg = write_config(dir.path(), port, &target, &job(&hc.url("/ping/abc")));
    let mut d = Daemon::start(&cfg, dir.path(), port);
    d.finished("failed", 60);
    std::fs::remove_file(&target).unwrap();
    d.finished("ok", 60);
    // The end notifications are sent after the line is printed: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let paths = |h: &Http| h.seen().iter().map(|s| s.path.clone()).collect::<Vec<_>>();
    while !paths(&hc).iter().any(|p| p == "/ping/abc") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = paths(&hc);
    let start = seen.iter().position(|p| p == "/ping/abc/start");
    let fail = seen.iter().position(|p| p == "/ping/abc/fail");
    let ok = seen.iter().position(|p| p == "/ping/abc");
    assert!(
        start.is_some() && fail.is_some() && ok.is_some() && start < fail && fail < ok,
        "healthchecks saw {seen:?}\n{}",
        d.said()
    );
    let failures = hook.seen();
    assert!(
        failures
            .iter()
            .any(|s| s.method == "POST" && s.path == "/hook"),
        "the failure webhook saw {:?}",
        paths(&hook)
    );
    // A reload that points the job at another check is followed by the next run's pings.
    let hc2 = Http::start(Answer::Status(200));
    write_config(dir.path(), port, &target, &job(&hc2.url("/ping/def")));
    d.signal(libc::SIGHUP);
    d.event("reloaded", 30);
    d.finished("ok", 60);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !paths(&hc2).iter().any(|p| p == "/ping/def") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        paths(&hc2).iter().any(|p| p == "/ping/def"),
        "after the reload: {:?}",
        paths(&hc2)
    );
    // The receiver nobody answers at is counted, per job, and the runs were not failed by it.
    let (_, metrics) = d.get("/metrics");
    let scrape =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(
        sample(
            &scrape,
            "voltar_notifications_failed_total",
            &[("job", "dn")]
        ) >= 1.0,
        "{metrics}"
    );
    let (code, _) = d.stop();
    assert_eq!(code, 0, "{}", d.said());
}
