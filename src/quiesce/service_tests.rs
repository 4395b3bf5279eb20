//! Swarm services in quiesce, against a recording fake (the real engine is in `tests/integration/swarm.rs`): the
//! "scaled from N" entry is on disk before the scale-down, release and recover scale back only a service still at
//! 0, and a global service is refused untouched.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::journal::{journal_dir, Journal, Record};
use super::*;
use crate::docker::{ContainerState, DockerError, Runtime, ServiceInfo, ServiceMode};

/// Services by id, with a log of the calls; on a scale it checks the journal on disk.
struct Fake {
    services: Mutex<HashMap<String, ServiceMode>>,
    calls: Mutex<Vec<String>>,
    journal_dir: std::path::PathBuf,
}

impl Fake {
    fn new(state_dir: &std::path::Path, services: &[(&str, ServiceMode)]) -> Fake {
        Fake {
            services: Mutex::new(
                services
                    .iter()
                    .map(|(id, m)| (id.to_string(), m.clone()))
                    .collect(),
            ),
            calls: Mutex::new(Vec::new()),
            journal_dir: journal_dir(state_dir),
        }
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn set(&self, id: &str, m: ServiceMode) {
        self.services.lock().unwrap().insert(id.to_string(), m);
    }
    fn replicas(&self, id: &str) -> Option<u64> {
        match self.services.lock().unwrap().get(id) {
            Some(ServiceMode::Replicated { replicas }) => Some(*replicas),
            _ => None,
        }
    }
    /// Whether a journal on disk says "scaled from N" for `id`.
    fn journaled(&self, id: &str) -> bool {
        std::fs::read_dir(&self.journal_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|t| {
                    t.lines().any(|l| {
                        matches!(serde_json::from_str::<Record>(l),
                            Ok(Record::Scale { id: ref i, .. }) if i == id)
                    })
                })
            })
    }
}

#[async_trait]
impl Runtime for Fake {
    async fn state(&self, id: &str) -> Result<ContainerState, DockerError> {
        Err(DockerError::NoSuchContainer(id.to_string()))
    }
    async fn pause(&self, id: &str) -> Result<(), DockerError> {
        Err(DockerError::NoSuchContainer(id.to_string()))
    }
    async fn unpause(&self, id: &str) -> Result<(), DockerError> {
        Err(DockerError::NoSuchContainer(id.to_string()))
    }
    async fn stop(&self, id: &str, _t: u32) -> Result<(), DockerError> {
        Err(DockerError::NoSuchContainer(id.to_string()))
    }
    async fn start(&self, id: &str) -> Result<(), DockerError> {
        Err(DockerError::NoSuchContainer(id.to_string()))
    }
    async fn service(&self, id: &str) -> Result<ServiceInfo, DockerError> {
        let mode = self
            .services
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| DockerError::NoSuchService(id.to_string()))?;
        Ok(ServiceInfo {
            id: id.to_string(),
            name: format!("{id}-name"),
            version: 1,
            mode,
            labels: Default::default(),
            container_labels: Default::default(),
        })
    }
    async fn scale_service(&self, id: &str, replicas: u64) -> Result<(), DockerError> {
        if replicas == 0 {
            let j = if self.journaled(id) {
                "journaled"
            } else {
                "NOT-journaled"
            };
            self.calls.lock().unwrap().push(format!("{j}:{id}"));
        }
        self.calls
            .lock()
            .unwrap()
            .push(format!("scale:{id}={replicas}"));
        if self.replicas(id).is_none() {
            return Err(DockerError::NoSuchService(id.to_string()));
        }
        self.set(id, ServiceMode::Replicated { replicas });
        Ok(())
    }
    async fn service_tasks_up(&self, id: &str) -> Result<Vec<String>, DockerError> {
        // The tasks are up exactly while the service has replicas.
        Ok(match self.replicas(id) {
            Some(n) if n > 0 => vec![format!("{id}.1")],
            _ => vec![],
        })
    }
}

fn hold(id: &str) -> ServiceHold {
    ServiceHold {
        id: id.to_string(),
        name: format!("{id}-name"),
        stop_timeout: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn scale_down_is_journaled_first_and_release_scales_back() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(
        dir.path(),
        &[("web", ServiceMode::Replicated { replicas: 2 })],
    );
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let held = q.scale_down(&[hold("web"), hold("web-idle")]).await;
    // A service that does not exist is an error, and what was scaled before it is put back.
    let err = held.unwrap_err();
    assert!(matches!(err, QuiesceError::Scale { .. }), "{err:?}");
    assert_eq!(fake.replicas("web"), Some(2));

    fake.set("idle", ServiceMode::Replicated { replicas: 0 });
    let held = q.scale_down(&[hold("web"), hold("idle")]).await.unwrap();
    assert_eq!(fake.replicas("web"), Some(0));
    // Already at 0: nothing to hold, nothing journaled.
    assert_eq!(held.services().len(), 1);
    assert_eq!(held.services()[0].replicas, 2);
    let rep = q.release(held).await;
    assert!(rep.is_ok(), "{:?}", rep.errors);
    assert_eq!(rep.services[0].outcome, ServiceOutcome::ScaledBack);
    assert_eq!(fake.replicas("web"), Some(2));
    assert_eq!(fake.replicas("idle"), Some(0));
    let calls = fake.calls();
    assert!(
        calls
            .windows(2)
            .all(|w| w[1] != "scale:web=0" || w[0] == "journaled:web"),
        "{calls:?}"
    );
    assert!(journal.pending().is_empty());
}

#[tokio::test]
async fn release_never_fights_a_user_who_rescaled_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(
        dir.path(),
        &[("web", ServiceMode::Replicated { replicas: 2 })],
    );
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let held = q.scale_down(&[hold("web")]).await.unwrap();
    fake.set("web", ServiceMode::Replicated { replicas: 5 });
    let rep = q.release(held).await;
    assert_eq!(rep.services[0].outcome, ServiceOutcome::LeftAlone(5));
    assert_eq!(fake.replicas("web"), Some(5));
}

#[tokio::test]
async fn a_global_service_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("agent", ServiceMode::Global)]);
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let err = q.scale_down(&[hold("agent")]).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, QuiesceError::NotScalable { .. }), "{err:?}");
    assert!(msg.contains("voltar.quiesce=pause"), "{msg}");
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert!(journal.pending().is_empty());
}

/// A run that dies with services at 0: recover scales back the one still at 0, leaves alone the one a user
/// rescaled, reports the one removed, and deletes the journal.
#[tokio::test]
async fn recover_scales_back_only_what_is_still_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(
        dir.path(),
        &[
            ("a", ServiceMode::Replicated { replicas: 2 }),
            ("b", ServiceMode::Replicated { replicas: 3 }),
            ("c", ServiceMode::Replicated { replicas: 1 }),
        ],
    );
    let journal = Journal::open(dir.path()).unwrap();
    let q = Quiescer::new(&fake, &journal);
    let held = q
        .scale_down(&[hold("a"), hold("b"), hold("c")])
        .await
        .unwrap();
    std::mem::forget(held); // the run dies: no release
    journal.abandon();
    fake.set("b", ServiceMode::Replicated { replicas: 4 });
    fake.services.lock().unwrap().remove("c");

    let rep = recover(dir.path(), &fake).await.unwrap();
    let outcomes: Vec<(String, u64, Result<ServiceOutcome, String>)> = rep
        .services
        .iter()
        .map(|s| (s.id.clone(), s.replicas, s.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("c".to_string(), 1, Ok(ServiceOutcome::Gone)),
            ("b".to_string(), 3, Ok(ServiceOutcome::LeftAlone(4))),
            ("a".to_string(), 2, Ok(ServiceOutcome::ScaledBack)),
        ]
    );
    assert_eq!(fake.replicas("a"), Some(2));
    assert_eq!(fake.replicas("b"), Some(4));
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(rep.replayed.len(), 1);
    assert!(rep.lines().contains(
        &"service a-name: scaled back to 2 replica(s) (left at 0 by an interrupted run)"
            .to_string()
    ));
}

/// Row 27 for services: while one run holds a service at 0, another run's plan sees its exited tasks as running
/// (so it plans the service and waits for the first run's lock instead of reading with no quiesce); an exited
/// task of a service nobody holds stays exited.
#[test]
fn a_task_of_a_service_another_run_holds_is_planned_as_running() {
    use crate::docker::{ContainerInfo, LABEL_SWARM_SERVICE_ID};
    let dir = tempfile::tempdir().unwrap();
    let task = |name: &str, service: &str| ContainerInfo {
        id: format!("id-{name}"),
        name: name.into(),
        image: "img".into(),
        state: ContainerState::Exited,
        labels: [(LABEL_SWARM_SERVICE_ID.to_string(), service.to_string())].into(),
        mounts: vec![],
    };
    let mut containers = vec![task("web.1", "held"), task("other.1", "free")];
    let other_run = crate::lock::ContainerLock::try_acquire(dir.path(), "service_held")
        .unwrap()
        .unwrap();
    let changed = see_through_other_runs(dir.path(), &mut containers);
    assert_eq!(changed, vec!["web.1".to_string()]);
    assert_eq!(containers[0].state, ContainerState::Running);
    assert_eq!(containers[1].state, ContainerState::Exited);
    drop(other_run);
}
