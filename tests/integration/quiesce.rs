//! Quiesce against the real Docker Engine (acceptance row 6): containers end in the state they were found in, on
//! success, on a failed hold, and after the holding process is killed with SIGKILL (journal replayed by
//! `recover`); a container the user paused or stopped is never touched. Also the engine wrapper's connection
//! errors and discovery.
//!
//! The SIGKILL tests re-run this test binary as a child that executes the ignored `child_helper` test (selected
//! by `--exact`), told what to do through environment variables: no extra binary to build.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use voltar::catalog::QuiesceAction;
use voltar::docker::{ContainerState, DockerError, Engine, MountKind, Runtime};
use voltar::quiesce::{
    journal_dir, recover, Hold, Journal, QuiesceError, Quiescer, RecoverOutcome, ReleaseOutcome,
};

use crate::require_docker;
use crate::support::{self, docker, docker_raw, Cleanup, IMAGE};

const CHILD_ROLE: &str = "VOLTAR_QUIESCE_CHILD";
const CHILD_STATE_DIR: &str = "VOLTAR_QUIESCE_CHILD_STATE_DIR";
const CHILD_HOLDS: &str = "VOLTAR_QUIESCE_CHILD_HOLDS";
const HELD_MARKER: &str = "VOLTAR-CHILD-HELD";
const ERR_MARKER: &str = "VOLTAR-CHILD-ERR";

/// A container that exits promptly on SIGTERM (busybox `sleep` as PID 1 ignores it, which would make every stop
/// wait out its whole grace period). `sleep & wait` so the trap runs at once, not after the current sleep.
fn run_stoppable(cleanup: &mut Cleanup, tag: &str, extra: &[&str]) -> String {
    let name = support::unique(tag);
    let mut args = vec!["run", "-d", "--name", name.as_str()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done",
    ]);
    docker(&args);
    cleanup.containers.push(name.clone());
    name
}

fn id_of(container: &str) -> String {
    docker(&["inspect", "-f", "{{.Id}}", container])
}

fn hold(container: &str, action: QuiesceAction) -> Hold {
    Hold {
        id: id_of(container),
        name: container.to_string(),
        action,
        stop_timeout: Duration::from_secs(1),
    }
}

fn now_ts() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// The pause/unpause/stop/start events the engine recorded for `container` since `since`.
fn lifecycle_events(container: &str, since: &str) -> Vec<String> {
    let out = docker(&[
        "events",
        "--since",
        since,
        "--until",
        &now_ts(),
        "--filter",
        &format!("container={container}"),
        "--format",
        "{{.Action}}",
    ]);
    out.lines()
        .map(str::trim)
        .filter(|a| matches!(*a, "pause" | "unpause" | "stop" | "start"))
        .map(str::to_string)
        .collect()
}

fn journal_files(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(journal_dir(state_dir))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn engine() -> Engine {
    Engine::connect(None)
        .await
        .expect("connect to the docker engine")
}

#[tokio::test]
async fn pause_holds_while_read_and_release_resumes_with_downtime() {
    require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("qdata");
    let web = c.run("qweb", &["-v", &format!("{vol}:/data")]);
    let engine = engine().await;
    let state = tempfile::tempdir().unwrap();
    let journal = Journal::open(state.path()).unwrap();
    let q = Quiescer::new(&engine, &journal);
    let since = now_ts();

    let held = q.hold(&[hold(&web, QuiesceAction::Pause)]).await.unwrap();
    assert_eq!(held.containers().len(), 1);
    assert_eq!(support::state(&web), "paused");
    assert_eq!(journal.pending(), std::slice::from_ref(&web));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = q.release(held).await;

    assert!(report.is_ok(), "{:?}", report.errors);
    assert_eq!(support::state(&web), "running");
    let r = &report.released[0];
    assert_eq!(r.outcome, ReleaseOutcome::Resumed);
    assert!(r.downtime >= Duration::from_millis(200), "{r:?}");
    assert!(r.downtime_ms() >= 200);
    assert_eq!(lifecycle_events(&web, &since), ["pause", "unpause"]);
    drop(journal);
    assert!(
        journal_files(state.path()).is_empty(),
        "a clean run leaves no journal"
    );
}

#[tokio::test]
async fn stop_mode_stops_while_read_and_starts_after() {
    require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("qdata");
    let db = run_stoppable(&mut c, "qdb", &["-v", &format!("{vol}:/data")]);
    let engine = engine().await;
    let state = tempfile::tempdir().unwrap();
    let journal = Journal::open(state.path()).unwrap();
    let q = Quiescer::new(&engine, &journal);
    let since = now_ts();

    let held = q.hold(&[hold(&db, QuiesceAction::Stop)]).await.unwrap();
    assert_eq!(support::state(&db), "exited");
    let report = q.release(held).await;

    assert!(report.is_ok(), "{:?}", report.errors);
    assert_eq!(support::state(&db), "running");
    assert!(report.downtime_of(&id_of(&db)).unwrap() > Duration::ZERO);
    assert_eq!(lifecycle_events(&db, &since), ["stop", "start"]);
}

#[tokio::test]
async fn a_container_the_user_paused_stays_paused_and_untouched() {
    require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("qdata");
    let mine = c.run("qmine", &["-v", &format!("{vol}:/data")]);
    let users = c.run("quser", &["-v", &format!("{vol}:/data")]);
    docker(&["pause", &users]);
    let engine = engine().await;
    let state = tempfile::tempdir().unwrap();
    let journal = Journal::open(state.path()).unwrap();
    let q = Quiescer::new(&engine, &journal);
    let since = now_ts();

    let held = q
        .hold(&[
            hold(&mine, QuiesceAction::Pause),
            hold(&users, QuiesceAction::Pause),
        ])
        .await
        .unwrap();
    assert_eq!(held.containers().len(), 1);
    assert_eq!(held.containers()[0].name, mine);
    assert_eq!(held.skipped().len(), 1);
    assert_eq!(held.skipped()[0].state, ContainerState::Paused);
    let report = q.release(held).await;

    assert!(report.is_ok(), "{:?}", report.errors);
    assert_eq!(support::state(&users), "paused", "the user's pause is kept");
    assert_eq!(support::state(&mine), "running");
    assert!(lifecycle_events(&users, &since).is_empty());
}

#[tokio::test]
async fn a_stopped_container_is_never_started() {
    require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("qdata");
    let stopped = run_stoppable(&mut c, "qstopped", &["-v", &format!("{vol}:/data")]);
    docker(&["stop", "-t", "1", &stopped]);
    let created = support::unique("qcreated");
    docker(&[
        "create",
        "--name",
        &created,
        "-v",
        &format!("{vol}:/data"),
        IMAGE,
        "sleep",
        "100000",
    ]);
    c.containers.push(created.clone());
    let engine = engine().await;
    let state = tempfile::tempdir().unwrap();
    let journal = Journal::open(state.path()).unwrap();
    let q = Quiescer::new(&engine, &journal);
    let since = now_ts();

    let held = q
        .hold(&[
            hold(&stopped, QuiesceAction::Stop),
            hold(&created, QuiesceAction::Pause),
        ])
        .await
        .unwrap();
    assert!(held.is_empty());
    let states: Vec<ContainerState> = held.skipped().iter().map(|s| s.state.clone()).collect();
    assert_eq!(states, [ContainerState::Exited, ContainerState::Created]);
    let report = q.release(held).await;
    assert!(report.released.is_empty() && report.is_ok());

    assert_eq!(support::state(&stopped), "exited");
    assert_eq!(support::state(&created), "created");
    assert!(lifecycle_events(&stopped, &since).is_empty());
    assert!(lifecycle_events(&created, &since).is_empty());
}

#[tokio::test]
async fn a_failed_hold_resumes_what_it_already_held() {
    require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("qdata");
    let a = c.run("qa", &["-v", &format!("{vol}:/data")]);
    let cc = c.run("qc", &["-v", &format!("{vol}:/data")]);
    let engine = engine().await;
    let state = tempfile::tempdir().unwrap();
    let journal = Journal::open(state.path()).unwrap();
    let q = Quiescer::new(&engine, &journal);
    let since = now_ts();
    let missing = Hold {
        id: "0000000000000000000000000000000000000000000000000000000000000bad".into(),
        name: "vanished".into(),
        action: QuiesceAction::Pause,
        stop_timeout: Duration::from_secs(1),
    };

    let err = q
        .hold(&[
            hold(&a, QuiesceAction::Pause),
            missing,
            hold(&cc, QuiesceAction::Pause),
        ])
        .await
        .unwrap_err();

    match &err {
        QuiesceError::Hold { name, source, .. } => {
            assert_eq!(name, "vanished");
            assert!(
                matches!(**source, DockerError::NoSuchContainer(_)),
                "{source:?}"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!err.leaves_containers_quiesced(), "{err}");
    assert!(err.to_string().contains("vanished"), "{err}");
    assert_eq!(support::state(&a), "running");
    assert_eq!(support::state(&cc), "running");
    assert_eq!(lifecycle_events(&a, &since), ["pause", "unpause"]);
    assert!(
        lifecycle_events(&cc, &since).is_empty(),
        "c is never touched"
    );
    assert!(journal.pending().is_empty());
}

/// A child process that is SIGKILLed when dropped, so a failing assertion cannot leave it holding containers.
struct ChildGuard(Child);

impl ChildGuard {
    /// SIGKILL (no destructor, no release: what `kill -9` does to a run) and reap.
    fn kill(&mut self) {
        let _ = self.0.kill();
        self.0.wait().unwrap();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawn this test binary running `child_helper` with `role`.
fn spawn_child(role: &str, envs: &[(&str, String)]) -> (ChildGuard, mpsc::Receiver<String>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "quiesce::child_helper",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ROLE, role)
    .env_remove("CI")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the test binary as a child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (ChildGuard(child), rx)
}

/// Wait for a line starting with `marker` from the child; its rest.
fn wait_for(rx: &mpsc::Receiver<String>, marker: &str) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                // libtest prints "test quiesce::child_helper ... " without a newline before the test's output.
                if let Some(at) = line.find(marker) {
                    return line[at + marker.len()..].trim().to_string();
                }
            }
            Err(e) => panic!("child never printed {marker}: {e}"),
        }
    }
}

/// Encode holds for the child: `id|name|pause|stop` per line.
fn encode_holds(holds: &[Hold]) -> String {
    holds
        .iter()
        .map(|h| format!("{}|{}|{}", h.id, h.name, h.action))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Not a test on its own: the child half of the SIGKILL tests (does nothing unless told to by the parent).
#[test]
#[ignore = "child process of the SIGKILL tests; run by them"]
fn child_helper() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        match role.as_str() {
            "connect" => {
                let err = Engine::connect(None).await.unwrap_err();
                println!("{ERR_MARKER} {err}");
            }
            "hold" => {
                let state_dir = std::env::var(CHILD_STATE_DIR).unwrap();
                let holds: Vec<Hold> = std::env::var(CHILD_HOLDS)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        let parts: Vec<&str> = l.split('|').collect();
                        Hold {
                            id: parts[0].into(),
                            name: parts[1].into(),
                            action: parts[2].parse().unwrap(),
                            stop_timeout: Duration::from_secs(1),
                        }
                    })
                    .collect();
                let engine = engine().await;
                let journal = Journal::open(Path::new(&state_dir)).unwrap();
                let q = Quiescer::new(&engine, &journal);
                let held = q.hold(&holds).await.unwrap();
                println!("{HELD_MARKER} {}", journal.path().display());
                // Killed here by the parent. Should the parent die first, release after a while anyway.
                tokio::time::sleep(Duration::from_secs(300)).await;
                let _ = q.release(held).await;
            }
            other => panic!("unknown child role {other}"),
        }
    });
}

async fn sigkill_then_recover(action: QuiesceAction, held_state: &str) {
    let mut c = Cleanup::default();
    let vol = c.volume("qdata");
    let a = run_stoppable(&mut c, "qka", &["-v", &format!("{vol}:/data")]);
    let b = run_stoppable(&mut c, "qkb", &["-v", &format!("{vol}:/data")]);
    let state = tempfile::tempdir().unwrap();
    let holds = [hold(&a, action), hold(&b, action)];
    let (mut child, rx) = spawn_child(
        "hold",
        &[
            (CHILD_STATE_DIR, state.path().display().to_string()),
            (CHILD_HOLDS, encode_holds(&holds)),
        ],
    );
    let journal_path = wait_for(&rx, HELD_MARKER);
    assert_eq!(support::state(&a), held_state);
    assert_eq!(support::state(&b), held_state);

    child.kill(); // SIGKILL: no destructor, no release
    assert_eq!(
        support::state(&a),
        held_state,
        "SIGKILL left it {held_state}"
    );
    assert!(
        Path::new(&journal_path).exists(),
        "the dead run's journal is left"
    );

    let engine = engine().await;
    let report = recover(state.path(), &engine).await.unwrap();

    let want = match action {
        QuiesceAction::Pause => RecoverOutcome::Unpaused,
        _ => RecoverOutcome::Started,
    };
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    assert_eq!(report.containers.len(), 2, "{report:?}");
    for r in &report.containers {
        assert_eq!(r.outcome, want, "{report:?}");
    }
    // Newest first, like release.
    assert_eq!(report.containers[0].name, b);
    assert_eq!(support::state(&a), "running");
    assert_eq!(support::state(&b), "running");
    assert!(
        journal_files(state.path()).is_empty(),
        "{:?}",
        journal_files(state.path())
    );

    // A second recover has nothing left to do.
    let again = recover(state.path(), &engine).await.unwrap();
    assert!(
        again.containers.is_empty() && again.replayed.is_empty(),
        "{again:?}"
    );
}

#[tokio::test]
async fn sigkill_while_paused_is_repaired_by_recover() {
    require_docker!();
    sigkill_then_recover(QuiesceAction::Pause, "paused").await;
}

#[tokio::test]
async fn sigkill_while_stopped_is_repaired_by_recover() {
    require_docker!();
    sigkill_then_recover(QuiesceAction::Stop, "exited").await;
}

#[tokio::test]
async fn recover_never_touches_a_live_runs_containers() {
    require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("qdata");
    let a = c.run("qlive", &["-v", &format!("{vol}:/data")]);
    let state = tempfile::tempdir().unwrap();
    let (mut child, rx) = spawn_child(
        "hold",
        &[
            (CHILD_STATE_DIR, state.path().display().to_string()),
            (CHILD_HOLDS, encode_holds(&[hold(&a, QuiesceAction::Pause)])),
        ],
    );
    let journal_path = wait_for(&rx, HELD_MARKER);
    let engine = engine().await;

    let report = recover(state.path(), &engine).await.unwrap();
    assert_eq!(report.live, 1, "{report:?}");
    assert!(
        report.containers.is_empty() && report.replayed.is_empty(),
        "{report:?}"
    );
    assert_eq!(support::state(&a), "paused", "the live run still holds it");
    assert!(Path::new(&journal_path).exists());

    child.kill();
    let report = recover(state.path(), &engine).await.unwrap();
    assert_eq!(report.live, 0);
    assert_eq!(report.containers[0].outcome, RecoverOutcome::Unpaused);
    assert_eq!(support::state(&a), "running");
}

#[test]
fn connect_names_the_socket_from_docker_host() {
    // In a child: DOCKER_HOST is process-wide and the other tests here need the real one.
    let (mut child, rx) = spawn_child(
        "connect",
        &[("DOCKER_HOST", "unix:///nonexistent.sock".to_string())],
    );
    let msg = wait_for(&rx, ERR_MARKER);
    child.0.wait().unwrap();
    assert!(msg.contains("unix:///nonexistent.sock"), "{msg}");
    assert!(msg.contains("cannot reach the Docker Engine"), "{msg}");
}

#[tokio::test]
async fn engine_negotiates_and_discovers_volumes_and_containers() {
    require_docker!();
    let mut c = Cleanup::default();
    let vol = support::unique("qdisc");
    docker(&["volume", "create", "--label", "voltar.test=yes", &vol]);
    c.volumes.push(vol.clone());
    let bind = tempfile::tempdir().unwrap();
    let web = c.run(
        "qdisc",
        &[
            "-v",
            &format!("{vol}:/data"),
            "-v",
            &format!("{}:/cfg:ro", bind.path().display()),
            "--label",
            "voltar.quiesce=stop",
        ],
    );
    let stopped = c.run("qdisc-stopped", &[]);
    docker(&["stop", "-t", "0", &stopped]);
    let engine = engine().await;
    assert!(engine.endpoint().starts_with("unix://") || engine.endpoint().starts_with("tcp://"));
    // The engine here speaks 1.41; bollard's default is newer, so this proves negotiation happened.
    let server = docker(&["version", "-f", "{{.Server.APIVersion}}"]);
    assert_eq!(engine.api_version(), server);

    let d = engine.discover().await.unwrap();
    let v = d
        .volumes
        .iter()
        .find(|v| v.name == vol)
        .expect("volume listed");
    assert_eq!(v.driver, "local");
    assert_eq!(v.labels.get("voltar.test").map(String::as_str), Some("yes"));
    assert_eq!(v.mountpoint, support::mountpoint(&vol));
    assert_eq!(v.scope, "local");
    let ci = d
        .containers
        .iter()
        .find(|c| c.name == web)
        .expect("container listed");
    assert_eq!(ci.id, id_of(&web));
    assert_eq!(ci.state, ContainerState::Running);
    assert_eq!(ci.image, IMAGE);
    assert_eq!(
        ci.labels.get("voltar.quiesce").map(String::as_str),
        Some("stop")
    );
    let data = ci.mounts.iter().find(|m| m.destination == "/data").unwrap();
    assert_eq!(data.kind, MountKind::Volume);
    assert_eq!(data.name.as_deref(), Some(vol.as_str()));
    assert!(data.rw);
    let cfg = ci.mounts.iter().find(|m| m.destination == "/cfg").unwrap();
    assert_eq!(cfg.kind, MountKind::Bind);
    assert_eq!(cfg.source, bind.path());
    assert!(!cfg.rw);
    let st = d
        .containers
        .iter()
        .find(|c| c.name == stopped)
        .expect("all=true");
    assert_eq!(st.state, ContainerState::Exited);
}

#[tokio::test]
async fn runtime_maps_missing_and_already_done() {
    require_docker!();
    let mut c = Cleanup::default();
    let a = run_stoppable(&mut c, "qrt", &[]);
    let engine = engine().await;
    let missing = "voltar-no-such-container-xyz";
    assert!(matches!(
        engine.state(missing).await,
        Err(DockerError::NoSuchContainer(_))
    ));
    assert!(matches!(
        engine.pause(missing).await,
        Err(DockerError::NoSuchContainer(_))
    ));
    assert!(matches!(
        engine.start(missing).await,
        Err(DockerError::NoSuchContainer(_))
    ));
    // 304: starting a running container / stopping a stopped one is fine.
    engine.start(&a).await.unwrap();
    engine.stop(&a, 1).await.unwrap();
    assert_eq!(engine.state(&a).await.unwrap(), ContainerState::Exited);
    engine.stop(&a, 1).await.unwrap();
    engine.start(&a).await.unwrap();
    assert_eq!(engine.state(&a).await.unwrap(), ContainerState::Running);
    // Unpausing a running container is refused by the engine (not a 404).
    assert!(matches!(
        engine.unpause(&a).await,
        Err(DockerError::Api { .. })
    ));
}

#[tokio::test]
async fn volume_create_inspect_remove() {
    require_docker!();
    let mut c = Cleanup::default();
    let name = support::unique("qvol");
    c.volumes.push(name.clone());
    let engine = engine().await;
    assert!(matches!(
        engine.inspect_volume(&name).await,
        Err(DockerError::NoSuchVolume(_))
    ));
    let labels = BTreeMap::from([("voltar.restored".to_string(), "1".to_string())]);
    let v = engine
        .create_volume(&name, "local", &BTreeMap::new(), &labels)
        .await
        .unwrap();
    assert_eq!(v.name, name);
    assert_eq!(v.labels, labels);
    assert_eq!(engine.inspect_volume(&name).await.unwrap(), v);
    // The engine would answer "created" again; we must not.
    assert!(matches!(
        engine
            .create_volume(&name, "local", &BTreeMap::new(), &BTreeMap::new())
            .await,
        Err(DockerError::VolumeExists(_))
    ));
    engine.remove_volume(&name).await.unwrap();
    assert!(matches!(
        engine.remove_volume(&name).await,
        Err(DockerError::NoSuchVolume(_))
    ));
    assert!(!docker_raw(&["volume", "inspect", &name]).status.success());
}

/// Three containers of one compose project, `web` and `worker` depending on `db`, all mounting one volume and
/// stoppable. Returns (db, web, worker) names.
fn compose_trio(c: &mut Cleanup) -> (String, String, String) {
    let vol = c.volume("qdep");
    let project = support::unique("qproj");
    let mount = format!("{vol}:/data");
    let mut make = |service: &str, depends: bool| {
        let mut extra = vec![
            "-v".to_string(),
            mount.clone(),
            "--label".to_string(),
            format!("com.docker.compose.project={project}"),
            "--label".to_string(),
            format!("com.docker.compose.service={service}"),
            "--label".to_string(),
            "voltar.stop-timeout=1s".to_string(),
        ];
        if depends {
            extra.push("--label".to_string());
            extra.push("com.docker.compose.depends_on=db:service_started:false".to_string());
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        run_stoppable(c, &format!("q{service}"), &extra)
    };
    let db = make("db", false);
    let web = make("web", true);
    let worker = make("worker", true);
    (db, web, worker)
}

/// `name action` for every stop/start event of `containers` since `since`, in the engine's order.
fn ordered_events(containers: &[&str], since: &str) -> Vec<(String, String)> {
    let mut args = vec![
        "events".to_string(),
        "--since".to_string(),
        since.to_string(),
        "--until".to_string(),
        now_ts(),
        "--format".to_string(),
        "{{.Actor.Attributes.name}} {{.Action}}".to_string(),
    ];
    for c in containers {
        args.push("--filter".to_string());
        args.push(format!("container={c}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args)
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .filter(|(_, a)| matches!(*a, "stop" | "start" | "pause" | "unpause"))
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .collect()
}

/// The position of `name`'s `action` event in `events`.
fn at(events: &[(String, String)], name: &str, action: &str) -> usize {
    events
        .iter()
        .position(|(n, a)| n == name && a == action)
        .unwrap_or_else(|| panic!("no {action} event of {name} in {events:?}"))
}

/// Dependents stop before what they depend on, and start after it.
fn assert_dependency_order(events: &[(String, String)], db: &str, web: &str, worker: &str) {
    for dependent in [web, worker] {
        assert!(
            at(events, dependent, "stop") < at(events, db, "stop"),
            "{dependent} must stop before {db}: {events:?}"
        );
        assert!(
            at(events, db, "start") < at(events, dependent, "start"),
            "{db} must start before {dependent}: {events:?}"
        );
    }
}

#[tokio::test]
async fn compose_dependencies_stop_dependents_first_and_start_them_last() {
    require_docker!();
    let mut c = Cleanup::default();
    let (db, web, worker) = compose_trio(&mut c);
    let engine = engine().await;
    let state = tempfile::tempdir().unwrap();
    let journal = Journal::open(state.path()).unwrap();
    let q = Quiescer::new(&engine, &journal);
    let since = now_ts();

    // Given in the order the plan lists them (db first): hold must reorder.
    let holds = [
        hold(&db, QuiesceAction::Stop),
        hold(&web, QuiesceAction::Stop),
        hold(&worker, QuiesceAction::Stop),
    ];
    let held = q.hold(&holds).await.unwrap();
    let taken: Vec<&str> = held.containers().iter().map(|h| h.name.as_str()).collect();
    assert_eq!(taken.last(), Some(&db.as_str()), "{taken:?}");
    let report = q.release(held).await;
    assert!(report.is_ok(), "{:?}", report.errors);
    for n in [&db, &web, &worker] {
        assert_eq!(support::state(n), "running");
    }

    let events = ordered_events(&[&db, &web, &worker], &since);
    assert_eq!(events.len(), 6, "{events:?}");
    assert_dependency_order(&events, &db, &web, &worker);
}

#[tokio::test]
async fn compose_dependencies_start_first_after_sigkill_and_recover() {
    require_docker!();
    let mut c = Cleanup::default();
    let (db, web, worker) = compose_trio(&mut c);
    let state = tempfile::tempdir().unwrap();
    let since = now_ts();
    let holds = [
        hold(&db, QuiesceAction::Stop),
        hold(&web, QuiesceAction::Stop),
        hold(&worker, QuiesceAction::Stop),
    ];
    let (mut child, rx) = spawn_child(
        "hold",
        &[
            (CHILD_STATE_DIR, state.path().display().to_string()),
            (CHILD_HOLDS, encode_holds(&holds)),
        ],
    );
    wait_for(&rx, HELD_MARKER);
    child.kill(); // SIGKILL during the read: no release
    for n in [&db, &web, &worker] {
        assert_eq!(support::state(n), "exited");
    }

    let engine = engine().await;
    let report = recover(state.path(), &engine).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    let started: Vec<&str> = report.containers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(started.first(), Some(&db.as_str()), "{report:?}");
    for n in [&db, &web, &worker] {
        assert_eq!(support::state(n), "running");
    }

    let events = ordered_events(&[&db, &web, &worker], &since);
    assert_eq!(events.len(), 6, "{events:?}");
    assert_dependency_order(&events, &db, &web, &worker);
}
