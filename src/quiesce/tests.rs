use std::fs::{self, File};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::journal::{Journal, Record};
use super::recover::{claim_opened, parse_journal, Claim, OpenEntry};
use super::*;
use crate::catalog::QuiesceAction;
use crate::docker::{ContainerInfo, ContainerState, DockerError, Runtime};
use async_trait::async_trait;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

/// A recording fake of the engine. On every pause/stop it reads the journal directory, to prove the entry was
/// on disk before the container changed.
struct Fake {
    states: Mutex<HashMap<String, ContainerState>>,
    calls: Mutex<Vec<String>>,
    journal_dir: PathBuf,
    /// `"op:id"` → error to return, and the state the container is in afterwards (someone else acted, or
    /// the engine acted but the answer was lost). `"state2:id"` fails the second state lookup of `id`.
    fail: Mutex<HashMap<String, (DockerError, Option<ContainerState>)>>,
    state_lookups: Mutex<HashMap<String, u32>>,
}

impl Fake {
    fn new(state_dir: &Path, containers: &[(&str, ContainerState)]) -> Fake {
        Fake {
            states: Mutex::new(
                containers
                    .iter()
                    .map(|(id, s)| (id.to_string(), s.clone()))
                    .collect(),
            ),
            calls: Mutex::new(Vec::new()),
            journal_dir: journal_dir(state_dir),
            fail: Mutex::new(HashMap::new()),
            state_lookups: Mutex::new(HashMap::new()),
        }
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn state_of(&self, id: &str) -> ContainerState {
        self.states.lock().unwrap()[id].clone()
    }
    fn set(&self, id: &str, s: ContainerState) {
        self.states.lock().unwrap().insert(id.to_string(), s);
    }
    fn fail_on(&self, op: &str, id: &str, e: DockerError) {
        self.fail
            .lock()
            .unwrap()
            .insert(format!("{op}:{id}"), (e, None));
    }
    fn fail_on_then(&self, op: &str, id: &str, e: DockerError, then: ContainerState) {
        self.fail
            .lock()
            .unwrap()
            .insert(format!("{op}:{id}"), (e, Some(then)));
    }
    fn journaled_before_change(&self, id: &str) -> bool {
        let Ok(rd) = fs::read_dir(&self.journal_dir) else {
            return false;
        };
        rd.flatten().any(|e| {
            fs::read_to_string(e.path()).is_ok_and(|t| {
                t.lines().any(|l| {
                    matches!(serde_json::from_str::<Record>(l),
                        Ok(Record::Hold { id: ref i, .. }) if i == id)
                })
            })
        })
    }
    fn op(
        &self,
        op: &str,
        id: &str,
        need: ContainerState,
        to: ContainerState,
    ) -> Result<(), DockerError> {
        if matches!(op, "pause" | "stop") {
            let j = if self.journaled_before_change(id) {
                "journaled"
            } else {
                "NOT-journaled"
            };
            self.calls.lock().unwrap().push(format!("{j}:{id}"));
        }
        self.calls.lock().unwrap().push(format!("{op}:{id}"));
        if let Some((e, then)) = self.fail.lock().unwrap().remove(&format!("{op}:{id}")) {
            if let Some(then) = then {
                self.set(id, then);
            }
            return Err(e);
        }
        let mut st = self.states.lock().unwrap();
        let cur = st
            .get(id)
            .cloned()
            .ok_or_else(|| DockerError::NoSuchContainer(id.to_string()))?;
        if cur != need {
            return Err(DockerError::Api {
                action: op.to_string(),
                message: format!("container is {cur}"),
            });
        }
        st.insert(id.to_string(), to);
        Ok(())
    }
}

#[async_trait]
impl Runtime for Fake {
    async fn remove_left_helper(&self, name: &str) -> Result<bool, DockerError> {
        self.calls.lock().unwrap().push(format!("rm-helper:{name}"));
        Ok(true)
    }
    async fn remove_left_volume(&self, name: &str) -> Result<(), DockerError> {
        self.calls.lock().unwrap().push(format!("rm-volume:{name}"));
        if name == "gone" {
            return Err(DockerError::NoSuchVolume(name.into()));
        }
        Ok(())
    }
    async fn state(&self, id: &str) -> Result<ContainerState, DockerError> {
        let n = {
            let mut l = self.state_lookups.lock().unwrap();
            let n = l.entry(id.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        if let Some((e, _)) = self.fail.lock().unwrap().remove(&format!("state{n}:{id}")) {
            return Err(e);
        }
        self.states
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| DockerError::NoSuchContainer(id.to_string()))
    }
    async fn pause(&self, id: &str) -> Result<(), DockerError> {
        self.op("pause", id, ContainerState::Running, ContainerState::Paused)
    }
    async fn unpause(&self, id: &str) -> Result<(), DockerError> {
        self.op(
            "unpause",
            id,
            ContainerState::Paused,
            ContainerState::Running,
        )
    }
    async fn stop(&self, id: &str, _t: u32) -> Result<(), DockerError> {
        self.op("stop", id, ContainerState::Running, ContainerState::Exited)
    }
    async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.op("start", id, ContainerState::Exited, ContainerState::Running)
    }
}

fn hold(id: &str, action: QuiesceAction) -> Hold {
    Hold {
        id: id.to_string(),
        name: format!("{id}-name"),
        action,
        stop_timeout: Duration::from_secs(1),
    }
}

fn journal_files(state_dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(journal_dir(state_dir))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

use ContainerState::*;
use QuiesceAction::{Pause, Stop};

#[tokio::test]
async fn hold_journals_first_and_release_resumes_in_reverse_order() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let held = q.hold(&[hold("a", Pause), hold("b", Pause)]).await.unwrap();
    assert_eq!(fake.state_of("a"), Paused);
    assert_eq!(fake.state_of("b"), Paused);
    let names: Vec<&str> = held.containers().iter().map(|c| c.id.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let report = q.release(held).await;
    assert!(report.is_ok(), "{:?}", report.errors);
    assert_eq!(
        fake.calls(),
        [
            "journaled:a",
            "pause:a",
            "journaled:b",
            "pause:b",
            "unpause:b",
            "unpause:a"
        ]
    );
    assert_eq!(fake.state_of("a"), Running);
    for r in &report.released {
        assert_eq!(r.outcome, ReleaseOutcome::Resumed);
        assert!(r.downtime >= Duration::from_millis(30), "{r:?}");
    }
    assert!(journal.pending().is_empty());
    let path = journal.path().to_path_buf();
    drop(journal);
    assert!(!path.exists(), "a clean run leaves no journal");
}

#[tokio::test]
async fn stop_mode_stops_and_starts() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let held = q.hold(&[hold("a", Stop)]).await.unwrap();
    assert_eq!(fake.state_of("a"), Exited);
    let report = q.release(held).await;
    assert!(report.is_ok());
    assert_eq!(fake.calls(), ["journaled:a", "stop:a", "start:a"]);
    assert_eq!(fake.state_of("a"), Running);
}

#[tokio::test]
async fn containers_not_running_are_skipped_and_never_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(
        dir.path(),
        &[("p", Paused), ("x", Exited), ("c", Created), ("r", Running)],
    );
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let held = q
        .hold(&[
            hold("p", Pause),
            hold("x", Stop),
            hold("c", Pause),
            hold("r", QuiesceAction::None),
        ])
        .await
        .unwrap();
    assert!(held.is_empty());
    let skipped: Vec<(&str, &ContainerState)> = held
        .skipped()
        .iter()
        .map(|s| (s.id.as_str(), &s.state))
        .collect();
    assert_eq!(
        skipped,
        [
            ("p", &Paused),
            ("x", &Exited),
            ("c", &Created),
            ("r", &Running)
        ]
    );
    let report = q.release(held).await;
    assert!(report.released.is_empty());
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert_eq!(fake.state_of("p"), Paused);
    assert_eq!(fake.state_of("x"), Exited);
}

#[tokio::test]
async fn failure_midway_resumes_the_ones_already_held() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running), ("c", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let err = q
        .hold(&[hold("a", Pause), hold("gone", Pause), hold("c", Pause)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QuiesceError::Hold { name, .. } if name == "gone-name"),
        "{err:?}"
    );
    assert!(!err.leaves_containers_quiesced(), "{err}");
    assert!(err.to_string().contains("gone-name"), "{err}");
    assert_eq!(fake.calls(), ["journaled:a", "pause:a", "unpause:a"]);
    assert_eq!(fake.state_of("a"), Running);
    assert_eq!(fake.state_of("c"), Running);
    assert!(journal.pending().is_empty());
}

#[tokio::test]
async fn a_refused_pause_never_unpauses_a_user_pause() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    // The user pauses b between our state check and our pause: the engine refuses ours.
    fake.fail_on_then(
        "pause",
        "b",
        DockerError::Api {
            action: "pause".into(),
            message: "container is already paused".into(),
        },
        Paused,
    );
    let err = q
        .hold(&[hold("a", Pause), hold("b", Pause)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, QuiesceError::Hold { ref name, .. } if name == "b-name"),
        "{err:?}"
    );
    assert!(!err.leaves_containers_quiesced(), "{err}");
    assert_eq!(fake.state_of("a"), Running, "a is rolled back");
    assert_eq!(fake.state_of("b"), Paused, "the user's pause stays");
    assert_eq!(
        fake.calls(),
        [
            "journaled:a",
            "pause:a",
            "journaled:b",
            "pause:b",
            "unpause:a"
        ]
    );
    assert!(journal.pending().is_empty());
}

#[tokio::test]
async fn a_lost_answer_is_checked_against_the_live_state_and_undone() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    // The engine stopped b but the answer was lost (timeout): b is ours to start again.
    fake.fail_on_then(
        "stop",
        "b",
        DockerError::Unreachable {
            endpoint: "unix:///x".into(),
            message: "no answer in time".into(),
        },
        Exited,
    );
    let err = q
        .hold(&[hold("a", Pause), hold("b", Stop)])
        .await
        .unwrap_err();
    assert!(!err.leaves_containers_quiesced(), "{err}");
    assert_eq!(fake.state_of("a"), Running);
    assert_eq!(fake.state_of("b"), Running);
    assert_eq!(
        fake.calls(),
        [
            "journaled:a",
            "pause:a",
            "journaled:b",
            "stop:b",
            "start:b",
            "unpause:a"
        ]
    );
    assert!(journal.pending().is_empty());

    // When even the state cannot be read, the entry stays journaled and the error says so.
    let fake = Fake::new(dir.path(), &[("c", Running)]);
    let q = Quiescer::new(&fake, &journal);
    let down = || DockerError::Unreachable {
        endpoint: "unix:///x".into(),
        message: "gone".into(),
    };
    fake.fail_on_then("pause", "c", down(), Paused);
    fake.fail
        .lock()
        .unwrap()
        .insert("state2:c".into(), (down(), None));
    let err = q.hold(&[hold("c", Pause)]).await.unwrap_err();
    assert!(err.leaves_containers_quiesced(), "{err}");
    assert!(err.to_string().contains("voltar recover"), "{err}");
    assert_eq!(journal.pending(), ["c-name"]);
    assert!(q.release_pending().await.is_ok());
    assert_eq!(fake.state_of("c"), Running);
}

#[tokio::test]
async fn release_tries_every_container_and_keeps_the_journal_for_recover() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let held = q.hold(&[hold("a", Pause), hold("b", Pause)]).await.unwrap();
    fake.fail_on(
        "unpause",
        "b",
        DockerError::Api {
            action: "unpause".into(),
            message: "boom".into(),
        },
    );
    let report = q.release(held).await;
    assert_eq!(report.errors.len(), 1);
    let msg = report.errors[0].to_string();
    assert!(
        msg.contains("b-name") && msg.contains("still paused") && msg.contains("voltar recover"),
        "{msg}"
    );
    assert!(report.errors[0].leaves_containers_quiesced());
    assert_eq!(
        fake.state_of("a"),
        Running,
        "a is resumed despite b failing"
    );
    assert_eq!(fake.state_of("b"), Paused);
    assert_eq!(journal.pending(), ["b-name"]);
    drop(journal);
    assert_eq!(journal_files(dir.path()).len(), 1, "journal kept");

    let rep = recover(dir.path(), &fake).await.unwrap();
    assert_eq!(rep.live, 0);
    assert_eq!(rep.replayed.len(), 1);
    assert_eq!(
        rep.containers,
        [Recovered {
            id: "b".into(),
            name: "b-name".into(),
            action: Pause,
            outcome: RecoverOutcome::Unpaused
        }]
    );
    assert_eq!(fake.state_of("b"), Running);
    assert!(journal_files(dir.path()).is_empty());
}

#[tokio::test]
async fn release_pending_resumes_what_a_lost_held_left() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let held = q.hold(&[hold("a", Pause), hold("b", Stop)]).await.unwrap();
    let report = q.release_pending().await;
    assert!(report.is_ok());
    assert_eq!(fake.state_of("a"), Running);
    assert_eq!(fake.state_of("b"), Running);
    // Releasing the Held afterwards does nothing twice.
    let again = q.release(held).await;
    assert!(again.released.is_empty() && again.is_ok());
    assert_eq!(
        fake.calls(),
        [
            "journaled:a",
            "pause:a",
            "journaled:b",
            "stop:b",
            "start:b",
            "unpause:a"
        ]
    );
}

#[tokio::test]
async fn recover_replays_an_abandoned_journal_by_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(
        dir.path(),
        &[
            ("p", Running),
            ("s", Running),
            ("fine", Running),
            ("rm", Running),
            ("odd", Running),
        ],
    );
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let held = q
        .hold(&[
            hold("p", Pause),
            hold("s", Stop),
            hold("fine", Pause),
            hold("rm", Stop),
            hold("odd", Pause),
        ])
        .await
        .unwrap();
    std::mem::forget(held);
    journal.abandon(); // the process "dies": lock released, file left
    fake.set("fine", Running); // someone unpaused it
    fake.states.lock().unwrap().remove("rm"); // removed
    fake.set("odd", Exited); // stopped by the user while paused

    let rep = recover(dir.path(), &fake).await.unwrap();
    let outcomes: HashMap<&str, &RecoverOutcome> = rep
        .containers
        .iter()
        .map(|c| (c.id.as_str(), &c.outcome))
        .collect();
    assert_eq!(outcomes["p"], &RecoverOutcome::Unpaused);
    assert_eq!(outcomes["s"], &RecoverOutcome::Started);
    assert_eq!(outcomes["fine"], &RecoverOutcome::AlreadyRunning);
    assert_eq!(outcomes["rm"], &RecoverOutcome::Gone);
    assert_eq!(outcomes["odd"], &RecoverOutcome::LeftAlone(Exited));
    assert_eq!(rep.resumed(), 2);
    assert!(rep.is_clean());
    // Newest first.
    let order: Vec<&str> = rep.containers.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(order, ["odd", "rm", "fine", "s", "p"]);
    assert_eq!(fake.state_of("odd"), Exited, "never started by recover");
    assert!(journal_files(dir.path()).is_empty());
    // A second recover finds nothing.
    let rep = recover(dir.path(), &fake).await.unwrap();
    assert_eq!(rep, RecoverReport::default());
}

#[tokio::test]
async fn recover_leaves_a_live_runs_journal_alone() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let held = q.hold(&[hold("a", Pause)]).await.unwrap();
    // Same process, separate open file description: flock still excludes us.
    let rep = recover(dir.path(), &fake).await.unwrap();
    assert_eq!(rep.live, 1);
    assert!(rep.containers.is_empty());
    assert_eq!(fake.state_of("a"), Paused);
    assert!(journal.path().exists());
    assert!(q.release(held).await.is_ok());
}

#[tokio::test]
async fn a_failed_recover_keeps_the_journal_for_the_next_try() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let held = Quiescer::new(&fake, &journal)
        .hold(&[hold("a", Pause)])
        .await
        .unwrap();
    std::mem::forget(held);
    journal.abandon();
    fake.fail_on(
        "unpause",
        "a",
        DockerError::Unreachable {
            endpoint: "unix:///x".into(),
            message: "down".into(),
        },
    );
    let rep = recover(dir.path(), &fake).await.unwrap();
    assert!(matches!(
        rep.containers[0].outcome,
        RecoverOutcome::Failed(_)
    ));
    assert_eq!(rep.kept.len(), 1);
    assert_eq!(journal_files(dir.path()).len(), 1);
    let rep = recover(dir.path(), &fake).await.unwrap();
    assert_eq!(rep.containers[0].outcome, RecoverOutcome::Unpaused);
    assert!(journal_files(dir.path()).is_empty());
}

#[test]
fn parse_ignores_a_torn_last_line_but_reports_a_bad_middle_line() {
    let hold_a = r#"{"event":"hold","seq":0,"id":"a","name":"an","action":"pause","state_before":"running","at":"x"}"#;
    let hold_b = r#"{"event":"hold","seq":1,"id":"b","name":"bn","action":"stop","state_before":"running","at":"x"}"#;
    let done_a = r#"{"event":"done","seq":0,"at":"x"}"#;
    let text = format!("{hold_a}\n{hold_b}\n{done_a}\n{{\"event\":\"ho");
    let p = parse_journal(&text);
    assert!(p.problems.is_empty(), "{p:?}");
    assert_eq!(
        p.containers,
        [OpenEntry {
            id: "b".into(),
            name: "bn".into(),
            action: Stop
        }]
    );

    let text = format!("{hold_a}\ngarbage\n{hold_b}\n");
    let p = parse_journal(&text);
    assert_eq!(p.problems.len(), 1, "{p:?}");
    assert!(p.problems[0].starts_with("line 2"), "{p:?}");
    assert_eq!(p.containers.len(), 2, "what can be read is still acted on");
}

/// Row 27: a second run that wants a container the first holds waits for the first to resume it, then
/// quiesces it itself (its own journal entry, its own downtime); it never takes the first one's pause for the
/// user's. When the first does not let go in time, the second fails without touching anything.
#[tokio::test]
async fn a_second_run_waits_for_the_first_and_then_quiesces_itself() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running)]);
    let j1 = Journal::open(dir.path()).unwrap();
    let j2 = Journal::open(dir.path()).unwrap();
    let q1 = Quiescer::new(&fake, &j1);
    let q2 = Quiescer::new(&fake, &j2).wait_for_others(Duration::from_millis(400));

    let held1 = q1.hold(&[hold("a", Pause)]).await.unwrap();
    assert_eq!(fake.state_of("a"), Paused);
    let t0 = Instant::now();
    match q2.hold(&[hold("a", Pause)]).await {
        Err(e @ QuiesceError::Busy { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("another voltar run"), "{msg}");
            assert!(msg.contains(&std::process::id().to_string()), "{msg}");
            assert!(!e.leaves_containers_quiesced());
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(400));
    let ops = || -> Vec<String> {
        fake.calls()
            .into_iter()
            .filter(|c| !c.starts_with("journaled"))
            .collect()
    };
    assert_eq!(ops(), ["pause:a"], "the second run touched nothing");

    let q2 = q2.wait_for_others(Duration::from_secs(30));
    let holds = [hold("a", Pause)];
    let (held2, rep1) = tokio::join!(q2.hold(&holds), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        q1.release(held1).await
    });
    assert!(rep1.is_ok());
    let held2 = held2.unwrap();
    assert_eq!(
        held2.containers().len(),
        1,
        "quiesced by the second run itself"
    );
    assert!(held2.skipped().is_empty());
    assert_eq!(ops(), ["pause:a", "unpause:a", "pause:a"]);
    assert_eq!(j2.pending(), ["a-name"]);
    let rep2 = q2.release(held2).await;
    assert!(rep2.is_ok() && rep2.released[0].outcome == ReleaseOutcome::Resumed);
    assert_eq!(fake.state_of("a"), Running);
}

/// A cancelled run stops waiting at once.
#[tokio::test]
async fn waiting_for_another_run_is_cut_short_by_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running)]);
    let j1 = Journal::open(dir.path()).unwrap();
    let j2 = Journal::open(dir.path()).unwrap();
    let q1 = Quiescer::new(&fake, &j1);
    let token = CancellationToken::new();
    let q2 = Quiescer::new(&fake, &j2).cancel_on(token.clone());
    let held1 = q1.hold(&[hold("a", Pause)]).await.unwrap();
    let t0 = Instant::now();
    let holds = [hold("a", Pause)];
    let (r, ()) = tokio::join!(q2.hold(&holds), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel();
    });
    assert!(matches!(r, Err(QuiesceError::Interrupted { .. })), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(q1.release(held1).await.is_ok());
}

/// At plan time a container another live run holds paused or stopped counts as running; one the user paused
/// (its quiesce lock is free) stays paused.
#[tokio::test]
async fn plan_sees_through_another_runs_hold_but_not_the_users() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
    let j = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &j);
    let held = q.hold(&[hold("a", Pause), hold("b", Stop)]).await.unwrap();
    let info = |id: &str, state: ContainerState| ContainerInfo {
        id: id.into(),
        name: format!("{id}n"),
        image: "img".into(),
        state,
        labels: Default::default(),
        mounts: vec![],
    };
    let mut found = vec![
        info("a", Paused),
        info("b", ContainerState::Exited),
        info("user", Paused),
    ];
    let changed = see_through_other_runs(dir.path(), &mut found);
    assert_eq!(changed, ["an", "bn"]);
    assert_eq!(found[0].state, Running);
    assert_eq!(found[1].state, Running);
    assert_eq!(found[2].state, Paused, "the user's pause is the user's");
    assert!(q.release(held).await.is_ok());
    let mut again = vec![info("a", Paused)];
    assert!(see_through_other_runs(dir.path(), &mut again).is_empty());
}

/// Row 26: a staging directory journaled by a run that died is removed by recover and reported with its
/// size; one marked done is not touched; a journaled path that is not a staging directory is left alone.
#[tokio::test]
async fn recover_removes_the_staging_directories_of_a_dead_run() {
    let dir = tempfile::tempdir().unwrap();
    let vols = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[]);
    let staging = vols.path().join(".voltar-staging-_data-0000abcd");
    let finished = vols.path().join(".voltar-staging-_data-0000beef");
    let not_ours = vols.path().join("_data");
    let journal = Journal::open(dir.path()).unwrap();
    for p in [&staging, &finished, &not_ours] {
        fs::create_dir_all(p.join("sub")).unwrap();
        fs::write(p.join("sub/f"), vec![0u8; 3000]).unwrap();
    }
    let seq = journal
        .will_create(&Leftover::StagingDir {
            path: staging.clone(),
        })
        .unwrap();
    assert!(seq < 10);
    let done = journal
        .will_create(&Leftover::StagingDir {
            path: finished.clone(),
        })
        .unwrap();
    journal.removed(done);
    journal
        .will_create(&Leftover::StagingDir {
            path: not_ours.clone(),
        })
        .unwrap();
    // Still alive: recover leaves it alone.
    let rep = recover(dir.path(), &fake).await.unwrap();
    assert_eq!(rep.live, 1);
    assert!(rep.leftovers.is_empty() && staging.exists());

    journal.abandon(); // the run dies
    let rep = recover(dir.path(), &fake).await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.leftovers.len(), 2, "{rep:?}");
    assert_eq!(
        rep.leftovers[0].outcome,
        LeftoverOutcome::Removed { bytes: 3000 }
    );
    assert!(matches!(
        rep.leftovers[1].outcome,
        LeftoverOutcome::LeftAlone(_)
    ));
    assert!(!staging.exists());
    assert!(finished.exists(), "marked done: not recover's business");
    assert!(not_ours.join("sub/f").exists());
    let lines = rep.lines();
    assert!(
        lines[0].contains(&staging.display().to_string()) && lines[0].contains("removed (2.9 KiB"),
        "{lines:?}"
    );
    assert!(journal_files(dir.path()).is_empty());
}

/// Issue 15: a restore through the engine killed half-way leaves its new volume and its helper container in the
/// journal; recover removes the helper first (a volume in use cannot be removed), then the volume, and a volume
/// already gone is fine. One the run finished (marked done) is not touched.
#[tokio::test]
async fn recover_removes_an_unfinished_engine_restores_helper_then_its_volume() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[]);
    let journal = Journal::open(dir.path()).unwrap();
    journal
        .will_create(&Leftover::NewVolume {
            volume: "half".into(),
        })
        .unwrap();
    journal
        .will_create(&Leftover::NewVolume {
            volume: "gone".into(),
        })
        .unwrap();
    let done = journal
        .will_create(&Leftover::NewVolume {
            volume: "finished".into(),
        })
        .unwrap();
    journal.removed(done);
    journal
        .will_create(&Leftover::Helper {
            name: "voltar-helper-1".into(),
            volume: "half".into(),
        })
        .unwrap();
    journal.abandon();
    let rep = recover(dir.path(), &fake).await.unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(
        fake.calls(),
        [
            "rm-helper:voltar-helper-1",
            "rm-volume:half",
            "rm-volume:gone"
        ]
    );
    let outcomes: Vec<_> = rep.leftovers.iter().map(|l| l.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        [
            LeftoverOutcome::Removed { bytes: 0 },
            LeftoverOutcome::Removed { bytes: 0 },
            LeftoverOutcome::AlreadyGone
        ]
    );
    assert!(journal_files(dir.path()).is_empty());
}

/// A run that removed its staging directory itself leaves no journal; one that could not keeps it for recover.
/// Paths that are not UTF-8 survive the journal.
#[test]
fn a_leftover_keeps_the_journal_until_removed() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let seq = journal
        .will_create(&Leftover::StagingDir {
            path: PathBuf::from("/x/.voltar-staging-a"),
        })
        .unwrap();
    journal.removed(seq);
    drop(journal);
    assert!(journal_files(dir.path()).is_empty());

    let journal = Journal::open(dir.path()).unwrap();
    let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/x/\xff/.voltar-staging-b"));
    journal
        .will_create(&Leftover::StagingDir { path: odd.clone() })
        .unwrap();
    let path = journal.path().to_path_buf();
    drop(journal);
    assert!(
        path.exists(),
        "kept: the staging directory may still be there"
    );
    let p = parse_journal(&fs::read_to_string(&path).unwrap());
    assert_eq!(p.leftovers, [Leftover::StagingDir { path: odd }], "{p:?}");
}

#[tokio::test]
async fn an_unreadable_line_keeps_the_journal_after_acting() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Paused)]);
    fs::create_dir_all(journal_dir(dir.path())).unwrap();
    let path = journal_dir(dir.path()).join("1-00.json");
    fs::write(
        &path,
        "garbage\n{\"event\":\"hold\",\"seq\":0,\"id\":\"a\",\"name\":\"an\",\"action\":\"pause\",\"state_before\":\"running\",\"at\":\"x\"}\n",
    )
    .unwrap();
    let rep = recover(dir.path(), &fake).await.unwrap();
    assert_eq!(rep.containers[0].outcome, RecoverOutcome::Unpaused);
    assert_eq!(rep.kept, std::slice::from_ref(&path));
    assert!(!rep.is_clean());
    assert!(path.exists());
}

#[test]
fn journal_dir_and_file_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let journal = Journal::open(&state).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&journal_dir(&state)), 0o700);
    assert_eq!(mode(journal.path()), 0o600);
    let name = journal
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&format!("{}-", std::process::id())),
        "{name}"
    );
    assert!(name.ends_with(".json"));
    // No temp file remains after open.
    assert_eq!(journal_files(&state), [journal.path().to_path_buf()]);
}

#[tokio::test]
async fn a_journal_replayed_between_open_and_lock_is_not_replayed_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("a", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let held = Quiescer::new(&fake, &journal)
        .hold(&[hold("a", Pause)])
        .await
        .unwrap();
    std::mem::forget(held);
    let path = journal.path().to_path_buf();
    journal.abandon();
    // Recover B has opened the journal but not locked it yet when recover A replays and deletes it.
    let opened_by_b = File::open(&path).unwrap();
    let rep = recover(dir.path(), &fake).await.unwrap();
    assert_eq!(rep.replayed, std::slice::from_ref(&path));
    // Someone pauses `a` again (e.g. the user); B must not act on the stale journal.
    fake.set("a", Paused);
    assert!(matches!(
        claim_opened(&path, opened_by_b).unwrap(),
        Claim::Vanished
    ));
}

#[test]
fn two_recovers_at_once_replay_a_journal_exactly_once() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_path_buf();
        let fake = std::sync::Arc::new(Fake::new(&state, &[("a", Running)]));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let journal = Journal::open(&state).unwrap();
        let held = rt
            .block_on(Quiescer::new(&*fake, &journal).hold(&[hold("a", Pause)]))
            .unwrap();
        std::mem::forget(held);
        journal.abandon();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (state, fake, barrier) = (state.clone(), fake.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    barrier.wait();
                    rt.block_on(recover(&state, &*fake)).unwrap()
                })
            })
            .collect();
        let reports: Vec<RecoverReport> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let replayed: usize = reports.iter().map(|r| r.replayed.len()).sum();
        let acted: usize = reports.iter().map(|r| r.containers.len()).sum();
        assert_eq!(replayed, 1, "{reports:?}");
        assert_eq!(acted, 1, "{reports:?}");
        assert_eq!(fake.state_of("a"), Running);
    }
}

/// `voltar recover` as a value: the journal replayed, a killed backup's spool file removed, one line for each
/// (what the CLI prints), and nothing the second time.
#[tokio::test]
async fn recover_run_replays_journals_and_sweeps_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    fs::create_dir(&spool).unwrap();
    // pid 0 never names a live run.
    let left = spool.join(format!(
        "{}0-0000000000000001",
        crate::pipeline::SPOOL_PREFIX
    ));
    fs::write(&left, b"spooled").unwrap();
    fs::write(spool.join("not-ours"), b"kept").unwrap();
    let fake = Fake::new(dir.path(), &[("p", Running)]);
    let journal = Journal::open(dir.path()).unwrap();
    let held = Quiescer::new(&fake, &journal)
        .hold(&[hold("p", Pause)])
        .await
        .unwrap();
    std::mem::forget(held);
    journal.abandon();

    let run = recover_run(dir.path(), &spool, &fake).await.unwrap();
    assert_eq!(run.journals.resumed(), 1);
    assert_eq!(run.spool_files, std::slice::from_ref(&left));
    let lines = run.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("unpaused"), "{lines:?}");
    assert_eq!(
        lines[1],
        format!(
            "removed spool file {} left by an interrupted run",
            left.display()
        )
    );
    assert!(!left.exists() && spool.join("not-ours").exists());
    let again = recover_run(dir.path(), &spool, &fake).await.unwrap();
    assert!(again.lines().is_empty(), "{:?}", again.lines());
}
