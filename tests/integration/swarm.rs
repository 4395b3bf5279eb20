//! Issue 15, "Swarm": services labelled for quiesce `stop` are scaled to 0 while their volume is read and back to
//! their replica count after (a task container is never stopped: the orchestrator would replace it); a run killed
//! with SIGKILL is repaired by `voltar recover`; a global service with `stop` is refused with the label to set,
//! and one with `pause` has its task paused (which does not make swarm replace it).
//!
//! The shared engine is never switched into swarm mode (other tests run on it at the same time): every test
//! starts its own second dockerd ([`SecondEngine`]), makes it a single-node swarm and points voltar at it with
//! `DOCKER_HOST`. Its volumes live under its data root on this host, so voltar reads them as usual.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{unique, Out, SecondEngine};

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

/// A task that exits promptly on SIGTERM (busybox `sleep` as PID 1 ignores it).
const STOPPABLE: &str = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done";

/// A second engine in swarm mode, and a state dir, working dir and backup dir for voltar.
struct World {
    engine: SecondEngine,
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> Option<World> {
        let mut engine = SecondEngine::start()?;
        engine.swarm_init();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("cwd")).unwrap();
        Some(World { engine, tmp })
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn target(&self) -> String {
        self.tmp.path().join("backups").display().to_string()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.tmp.path().join("cwd"))
            .env("DOCKER_HOST", self.engine.host())
            .env("VOLTAR_STATE_DIR", self.state())
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        Out::from(self.cmd(args).output().expect("run voltar"))
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start voltar")
    }

    /// A config with zstd level 12: reading random data then takes seconds, long enough to look at the service
    /// while its volume is read (and to kill voltar then).
    fn slow_config(&self) -> String {
        let p = self.tmp.path().join("slow.toml");
        std::fs::write(&p, "[archive]\nzstd-level = 12\n").unwrap();
        p.display().to_string()
    }

    /// A volume with `marker.txt` and `mib` MiB of random data, written through its host path.
    fn volume(&self, tag: &str, mib: u64) -> String {
        let name = unique(tag);
        self.engine.docker(&["volume", "create", &name]);
        let dir = PathBuf::from(self.engine.docker(&[
            "volume",
            "inspect",
            "-f",
            "{{.Mountpoint}}",
            &name,
        ]));
        std::fs::write(dir.join("marker.txt"), format!("data of {name}\n")).unwrap();
        if mib > 0 {
            crate::s3::random_file(&dir.join("random.bin"), mib << 20);
        }
        name
    }

    /// `docker service create` (waits until the tasks run), returning the service's id.
    fn service(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["service", "create", "--quiet", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["voltar-test:latest", "sh", "-c", STOPPABLE]);
        self.engine.docker(&args)
    }

    fn replicas(&self, service: &str) -> u64 {
        self.engine
            .docker(&[
                "service",
                "inspect",
                "-f",
                "{{.Spec.Mode.Replicated.Replicas}}",
                service,
            ])
            .parse()
            .unwrap()
    }

    /// The service's task containers that are running on the engine.
    fn running_tasks(&self, service: &str) -> Vec<String> {
        self.engine
            .docker(&[
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label=com.docker.swarm.service.name={service}"),
                "--filter",
                "status=running",
            ])
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// Wait (at most 60 s) until `n` tasks of the service run.
    #[track_caller]
    fn wait_running(&self, service: &str, n: usize) {
        let t = Instant::now();
        while self.running_tasks(service).len() != n {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "service {service}: {} running tasks, expected {n}",
                self.running_tasks(service).len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every task the service ever had: `CURRENT-STATE|DESIRED-STATE|ERROR` per task.
    fn task_history(&self, service: &str) -> Vec<String> {
        self.engine
            .docker(&[
                "service",
                "ps",
                "--no-trunc",
                "--format",
                "{{.CurrentState}}|{{.DesiredState}}|{{.Error}}",
                service,
            ])
            .lines()
            .map(String::from)
            .collect()
    }

    /// [`task_history`](Self::task_history) once no task is still on its way up: swarm reports a task as
    /// `Starting` for a moment after its container runs, so wait (at most 30 s) until every task has left the
    /// states before `Running` (new, pending, assigned, accepted, preparing, ready, starting).
    fn settled_history(&self, service: &str) -> Vec<String> {
        let t = Instant::now();
        loop {
            let h = self.task_history(service);
            let on_the_way = |s: &String| {
                [
                    "New",
                    "Pending",
                    "Assigned",
                    "Accepted",
                    "Preparing",
                    "Ready",
                    "Starting",
                ]
                .iter()
                .any(|p| s.starts_with(p))
            };
            if !h.iter().any(on_the_way) || t.elapsed() > Duration::from_secs(30) {
                return h;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The service's updates since `since` (engine events): (time in ns, replicas before, replicas after).
    fn service_updates(&self, service: &str, since: &str) -> Vec<(i128, String, String)> {
        self.engine
            .docker(&[
                "events",
                "--since",
                since,
                "--until",
                &chrono_now(),
                "--filter",
                "type=service",
                "--filter",
                &format!("service={service}"),
                "--format",
                "{{.TimeNano}} {{.Action}} {{index .Actor.Attributes \"replicas.old\"}} {{index .Actor.Attributes \"replicas.new\"}}",
            ])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4 && f[1] == "update")
                    .then(|| (f[0].parse().unwrap(), f[2].to_string(), f[3].to_string()))
            })
            .collect()
    }

    /// When container `id` died (engine events since `since`, in ns); panics if it did not.
    fn died_at(&self, id: &str, since: &str) -> i128 {
        let out = self.engine.docker(&[
            "events",
            "--since",
            since,
            "--until",
            &chrono_now(),
            "--filter",
            &format!("container={id}"),
            "--filter",
            "event=die",
            "--format",
            "{{.TimeNano}}",
        ]);
        out.lines()
            .next()
            .unwrap_or_else(|| panic!("container {id} did not die"))
            .parse()
            .unwrap()
    }

    fn journal_files(&self) -> Vec<String> {
        std::fs::read_dir(voltar::quiesce::journal_dir(&self.state()))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What `marker.txt` says in the one archive of `vol` under `target`.
fn marker_in_archive(target: &Path, vol: &str) -> String {
    let archive = walkdir::WalkDir::new(target)
        .into_iter()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{vol}.tar"))
        })
        .unwrap_or_else(|| panic!("no archive of {vol} under {}", target.display()))
        .into_path();
    let out = Command::new("sh")
        .arg("-c")
        .arg("zstd -dc \"$1\" | tar -xOf - --wildcards '*marker.txt'")
        .arg("sh")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// While `child` runs, wait until the service is at 0 replicas with no running task; returns whether that was
/// seen before the run ended.
fn saw_scaled_down_while_running(w: &World, service: &str, child: &mut Child) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        let scaled = w.replicas(service) == 0 && w.running_tasks(service).is_empty();
        // Still running after the observation: the read was going on when the service was down.
        if scaled && child.try_wait().unwrap().is_none() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A replicated service (2 replicas) using a volume, labelled `voltar.quiesce=stop` (service label): `voltar plan`
/// says it will be scaled; the backup scales it to 0 while the volume is read and back to 2 after; no task was
/// stopped directly (no task failed or completed, no replacement task in the history);
/// the archive holds the data.
#[test]
fn issue15_replicated_service_is_scaled_to_zero_while_read_and_back_after() {
    let Some(w) = World::new() else { return };
    let vol = w.volume("svc-data", 48);
    let svc = unique("web");
    w.service(
        &svc,
        &[
            "--replicas",
            "2",
            "--label",
            "voltar.quiesce=stop",
            "--mount",
            &format!("type=volume,src={vol},dst=/data"),
        ],
    );
    w.wait_running(&svc, 2);

    let plan = w.run(&["plan", "--only", &vol]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(
        plan.stdout
            .contains(&format!("scale {svc} (service, 2 replicas) to 0")),
        "{plan:?}"
    );

    let cfg = w.slow_config();
    let t = w.target();
    let mut child = w.spawn(&["--json", "-c", &cfg, "backup", "--only", &vol, "-t", &t]);
    let seen = saw_scaled_down_while_running(&w, &svc, &mut child);
    let out = Out::from(child.wait_with_output().unwrap());
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        seen,
        "the service was not at 0 replicas while its volume was read: {out:?}"
    );
    assert_eq!(w.replicas(&svc), 2, "{out:?}");
    w.wait_running(&svc, 2);

    // Scaling to 0 removes the old tasks from the history; a task container stopped directly would stay there as a
    // failed or completed task beside its replacement.
    let history = w.settled_history(&svc);
    assert_eq!(history.len(), 2, "{history:#?}");
    for h in &history {
        assert!(
            !h.starts_with("Failed") && !h.starts_with("Complete") && !h.starts_with("Rejected"),
            "a task was stopped or failed instead of being scaled away: {history:#?}"
        );
    }
    assert_eq!(
        history.iter().filter(|h| h.starts_with("Running")).count(),
        2,
        "{history:#?}"
    );
    assert!(w.journal_files().is_empty(), "{:?}", w.journal_files());
    assert_eq!(
        marker_in_archive(Path::new(&t), &vol),
        format!("data of {vol}\n")
    );
}

/// SIGKILL during the read leaves the service at 0 with the journal saying "scaled from 2"; `voltar recover` puts
/// it back at 2 replicas and empties the journal; a second recover has nothing to do.
#[test]
fn issue15_sigkill_during_the_read_is_repaired_by_recover() {
    let Some(w) = World::new() else { return };
    let vol = w.volume("svc-kill", 64);
    let svc = unique("web");
    // The label as a container label this time (`--container-label`): both places are read.
    w.service(
        &svc,
        &[
            "--replicas",
            "2",
            "--container-label",
            "voltar.quiesce=stop",
            "--mount",
            &format!("type=volume,src={vol},dst=/data"),
        ],
    );
    w.wait_running(&svc, 2);

    let cfg = w.slow_config();
    let t = w.target();
    let mut child = w.spawn(&["-c", &cfg, "backup", "--only", &vol, "-t", &t]);
    assert!(
        saw_scaled_down_while_running(&w, &svc, &mut child),
        "the service was not scaled down during the read"
    );
    child.kill().unwrap(); // SIGKILL: no release
    child.wait().unwrap();
    assert_eq!(
        w.replicas(&svc),
        0,
        "nobody scaled it back: the journal must"
    );
    assert_eq!(w.journal_files().len(), 1, "{:?}", w.journal_files());

    let rec = w.run(&["recover"]);
    assert_eq!(rec.code, 0, "{rec:?}");
    assert!(
        rec.stdout
            .contains(&format!("service {svc}: scaled back to 2 replica(s)")),
        "{rec:?}"
    );
    assert_eq!(w.replicas(&svc), 2);
    w.wait_running(&svc, 2);
    assert!(w.journal_files().is_empty(), "{:?}", w.journal_files());
    let again = w.run(&["recover"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("nothing to recover"), "{again:?}");
}

/// A global service cannot be scaled. With `stop` the source fails before anything is touched, and the message
/// names the label to set; its task keeps running (the same container). With `pause` its task on this node is
/// paused while the volume is read and unpaused after — the same container, not replaced by swarm.
#[test]
fn issue15_global_service_stop_is_refused_and_pause_pauses_its_task() {
    let Some(w) = World::new() else { return };
    let vol = w.volume("global-data", 0);
    let svc = unique("glob");
    w.service(
        &svc,
        &[
            "--mode",
            "global",
            "--label",
            "voltar.quiesce=stop",
            "--mount",
            &format!("type=volume,src={vol},dst=/data"),
        ],
    );
    w.wait_running(&svc, 1);
    let task = w.running_tasks(&svc).remove(0);

    let plan = w.run(&["plan", "--only", &vol]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.contains("voltar.quiesce=pause"), "{plan:?}");
    let t = w.target();
    let out = w.run(&["backup", "--only", &vol, "-t", &t]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.all().contains(&format!(
            "swarm service {svc} is global and cannot be scaled to 0"
        )) && out.all().contains("voltar.quiesce=pause"),
        "{out:?}"
    );
    assert_eq!(
        w.running_tasks(&svc),
        vec![task.clone()],
        "the task was touched"
    );
    assert!(w.journal_files().is_empty(), "{:?}", w.journal_files());

    // The fix the message names.
    w.engine.docker(&[
        "service",
        "update",
        "--quiet",
        "--label-add",
        "voltar.quiesce=pause",
        &svc,
    ]);
    w.wait_running(&svc, 1);
    let task = w.running_tasks(&svc).remove(0);
    let tasks_before = w.task_history(&svc).len();
    let events_from = chrono_now();
    let out = w.run(&["--json", "backup", "--only", &vol, "-t", &t]);
    assert_eq!(out.code, 0, "{out:?}");
    let events = w.engine.docker(&[
        "events",
        "--since",
        &events_from,
        "--until",
        &chrono_now(),
        "--filter",
        &format!("container={task}"),
        "--format",
        "{{.Action}}",
    ]);
    let actions: Vec<&str> = events.lines().collect();
    assert_eq!(actions, vec!["pause", "unpause"], "{out:?}");
    assert_eq!(
        w.running_tasks(&svc),
        vec![task],
        "swarm replaced the paused task"
    );
    assert_eq!(
        w.task_history(&svc).len(),
        tasks_before,
        "{:#?}",
        w.task_history(&svc)
    );
}

/// Restore into the volume of a replicated service (2 replicas; no quiesce label: a restore stops every user):
/// the service is scaled to 0, its old tasks die, the swap happens, then it is scaled back to 2 (in that order,
/// by the engine's event times and the volume directory's ctime); no task was stopped directly; the volume holds
/// the backup's data again; the report names the service as stopped and restarted.
#[test]
fn issue15_restore_into_a_service_volume_scales_it_down_and_back() {
    let Some(w) = World::new() else { return };
    let vol = w.volume("svc-restore", 0);
    let svc = unique("web");
    w.service(
        &svc,
        &[
            "--replicas",
            "2",
            "--mount",
            &format!("type=volume,src={vol},dst=/data"),
        ],
    );
    w.wait_running(&svc, 2);
    let t = w.target();
    let out = w.run(&["backup", "--only", &vol, "-t", &t]);
    assert_eq!(out.code, 0, "{out:?}");
    let dir = PathBuf::from(
        w.engine
            .docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &vol]),
    );
    std::fs::write(dir.join("marker.txt"), "changed\n").unwrap();
    let before = w.running_tasks(&svc);

    let since = chrono_now();
    let out = w.run(&["--json", "restore", "latest", "--source", &vol, "-t", &t]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("marker.txt")).unwrap(),
        format!("data of {vol}\n")
    );
    // The order of things, from the engine's own clock: scaled to 0, the old tasks died, the swap (the
    // volume's directory was renamed into place: its ctime), scaled back to 2.
    let updates = w.service_updates(&svc, &since);
    assert_eq!(
        updates
            .iter()
            .map(|u| (u.1.as_str(), u.2.as_str()))
            .collect::<Vec<_>>(),
        vec![("2", "0"), ("0", "2")],
        "{updates:?} {out:?}"
    );
    let (down_at, up_at) = (updates[0].0, updates[1].0);
    let swapped_at = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&dir).unwrap();
        i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
    };
    for task in &before {
        let died = w.died_at(task, &since);
        assert!(
            down_at < died && died < swapped_at && swapped_at < up_at,
            "task {task}: scaled down at {down_at}, died at {died}, swap at {swapped_at}, scaled up at {up_at}"
        );
    }
    let r: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let named = format!("service {svc}");
    assert!(
        r["sources"][0]["stop"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == &named[..])
            && r["sources"][0]["restarted"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == &named[..]),
        "{out:?}"
    );
    assert_eq!(w.replicas(&svc), 2);
    w.wait_running(&svc, 2);
    let after = w.running_tasks(&svc);
    assert!(
        before.iter().all(|b| !after.contains(b)),
        "the old tasks were not scaled away"
    );
    let history = w.settled_history(&svc);
    assert_eq!(history.len(), 2, "{history:#?}");
    assert!(
        history.iter().all(|h| h.starts_with("Running")),
        "{history:#?}"
    );
    assert!(w.journal_files().is_empty(), "{:?}", w.journal_files());
}

/// Unix time with fractions, as `docker events --since/--until` take it.
fn chrono_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// A scaled service is part of what a run did: the manifest, `backup --json` and the summary table say which
/// service was scaled from how many replicas to 0, for how long, and that it is back (its task containers were
/// not touched themselves: action `none`); `restore --json` and its report say the same. (Older manifests without
/// the field load: `catalog::tests::service_records_and_older_source_records`.)
#[test]
fn scaled_services_are_in_the_manifest_the_json_and_the_tables() {
    let Some(w) = World::new() else { return };
    let vol = w.volume("svc-rec", 0);
    let svc = unique("web");
    w.service(
        &svc,
        &[
            "--replicas",
            "2",
            "--label",
            "voltar.quiesce=stop",
            "--mount",
            &format!("type=volume,src={vol},dst=/data"),
        ],
    );
    w.wait_running(&svc, 2);
    let t = w.target();
    let check = |rec: &serde_json::Value, what: &str| {
        let s = &rec["services"];
        assert_eq!(s.as_array().map(Vec::len), Some(1), "{what}: {rec:#}");
        assert_eq!(s[0]["name"], svc.as_str(), "{what}: {rec:#}");
        assert_eq!(s[0]["replicas"], 2, "{what}: {rec:#}");
        assert_eq!(s[0]["scaled-to"], 0, "{what}: {rec:#}");
        assert_eq!(s[0]["scaled-back"], true, "{what}: {rec:#}");
        assert!(
            s[0]["downtime-ms"].as_u64().unwrap_or(0) > 0,
            "{what}: {rec:#}"
        );
    };

    let out = w.run(&["--json", "backup", "--only", &vol, "-t", &t]);
    assert_eq!(out.code, 0, "{out:?}");
    let r: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    check(&r["sources"][0], "backup --json");
    let manifest = std::fs::read_dir(&t)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("manifest.json"))
        .find(|m| m.exists())
        .expect("a manifest");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    check(&m["sources"][0], "manifest");
    w.wait_running(&svc, 2);

    // The summary table: the service in the downtime column, as scaled.
    let out = w.run(&["backup", "--only", &vol, "-t", &t]);
    assert_eq!(out.code, 0, "{out:?}");
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&vol))
        .unwrap_or_else(|| panic!("no row for {vol}: {out:?}"))
        .to_string();
    assert!(
        row.contains(&format!("service {svc} scaled 2→0")),
        "{row}\n{out:?}"
    );
    w.wait_running(&svc, 2);

    let out = w.run(&["--json", "restore", "latest", "--source", &vol, "-t", &t]);
    assert_eq!(out.code, 0, "{out:?}");
    let r: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    check(&r["sources"][0], "restore --json");
    w.wait_running(&svc, 2);
    let out = w.run(&[
        "restore",
        "latest",
        "--source",
        &vol,
        "-t",
        &t,
        "--no-safety-backup",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("service {svc}: scaled from 2 to 0")),
        "{out:?}"
    );
    assert_eq!(w.replicas(&svc), 2);
}
