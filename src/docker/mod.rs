//! The only module that talks to the Docker Engine. bollard types stay inside `engine.rs`; the rest of the crate
//! sees the plain types below and the [`Runtime`] trait (which tests can fake to record the order of calls).

pub mod engine;
pub mod exec;
pub mod helper;
mod ssh;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;

pub use engine::Engine;
pub use exec::{Captured, ExecEnd, ExecOutcome, ExecSpec, ExecStdout, Killed};

/// Compose labels, read for display and for grouping.
pub const LABEL_COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_COMPOSE_SERVICE: &str = "com.docker.compose.service";
pub const LABEL_SWARM_SERVICE: &str = "com.docker.swarm.service.name";
/// The id of the Swarm service a task container belongs to (set by the engine on every task container).
pub const LABEL_SWARM_SERVICE_ID: &str = "com.docker.swarm.service.id";

/// A named volume as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub driver: String,
    /// Host path of the volume's data (may not be reachable when voltar runs elsewhere).
    pub mountpoint: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub scope: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountKind {
    Volume,
    Bind,
    /// tmpfs, npipe, cluster volumes…: never backed up.
    Other(String),
}

/// One mount of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub kind: MountKind,
    /// Volume name (for volumes).
    pub name: Option<String>,
    /// Host path: volume mountpoint or bind source.
    pub source: PathBuf,
    /// Path inside the container.
    pub destination: String,
    pub rw: bool,
}

/// Container state as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    Other(String),
}

impl ContainerState {
    pub fn parse(s: &str) -> ContainerState {
        match s {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "exited" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            other => ContainerState::Other(other.to_string()),
        }
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
            ContainerState::Removing => "removing",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Other(s) => s,
        })
    }
}

/// A container with its mounts and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<MountInfo>,
}

impl ContainerInfo {
    pub fn compose_project(&self) -> Option<&str> {
        self.labels.get(LABEL_COMPOSE_PROJECT).map(String::as_str)
    }
    pub fn compose_service(&self) -> Option<&str> {
        self.labels.get(LABEL_COMPOSE_SERVICE).map(String::as_str)
    }
    pub fn swarm_service(&self) -> Option<&str> {
        self.labels.get(LABEL_SWARM_SERVICE).map(String::as_str)
    }
    pub fn swarm_service_id(&self) -> Option<&str> {
        self.labels.get(LABEL_SWARM_SERVICE_ID).map(String::as_str)
    }
}

/// How a Swarm service runs its tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceMode {
    /// A fixed number of tasks: can be scaled to 0 and back.
    Replicated { replicas: u64 },
    /// One task per node: cannot be scaled.
    Global,
    /// Jobs (`replicated-job`, `global-job`) and anything newer: never scaled by voltar.
    Other(String),
}

impl fmt::Display for ServiceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceMode::Replicated { replicas } => write!(f, "replicated, {replicas} replica(s)"),
            ServiceMode::Global => f.write_str("global"),
            ServiceMode::Other(m) => f.write_str(m),
        }
    }
}

/// A Swarm service as far as quiesce needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub id: String,
    pub name: String,
    /// The spec's version: an update must name it (the engine refuses an update of an outdated version).
    pub version: u64,
    pub mode: ServiceMode,
    /// The service's own labels (`docker service create --label`).
    pub labels: BTreeMap<String, String>,
    /// The labels its task containers get (`--container-label`); the engine shows them on each task container too.
    pub container_labels: BTreeMap<String, String>,
}

/// Everything discovery found on the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    pub volumes: Vec<VolumeInfo>,
    /// All containers, running or not.
    pub containers: Vec<ContainerInfo>,
    /// The Swarm services of the task containers among `containers` (none on an engine outside a swarm, and
    /// none on a worker node, which cannot read services).
    pub services: Vec<ServiceInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker Engine at {endpoint}: {message} (is dockerd running? set DOCKER_HOST to point elsewhere)")]
    Unreachable { endpoint: String, message: String },
    #[error("cannot reach the Docker Engine at {endpoint} through ssh: {message} (check that `ssh HOST docker version` works for this user without a prompt; VOLTAR_SSH_COMMAND sets the ssh command and its options)")]
    Ssh { endpoint: String, message: String },
    #[error("permission denied on the Docker Engine at {endpoint} (run voltar as root or as a member of the docker group)")]
    PermissionDenied { endpoint: String },
    #[error("container {0} not found")]
    NoSuchContainer(String),
    #[error("volume {0} not found (see `voltar plan` for the volumes voltar can see)")]
    NoSuchVolume(String),
    #[error("swarm service {0} not found")]
    NoSuchService(String),
    #[error("volume {0} already exists")]
    VolumeExists(String),
    /// The engine answered with an error: it refused, nothing was done. (Timeouts are `Unreachable`: unknown.)
    #[error("docker engine: {action}: {message}")]
    Api { action: String, message: String },
    #[error("cannot use the Docker Engine endpoint {endpoint}: {message}")]
    Unsupported { endpoint: String, message: String },
    /// TLS to the engine cannot be set up (certificate files) or the handshake failed.
    #[error("TLS to the Docker Engine at {endpoint}: {message}")]
    Tls { endpoint: String, message: String },
}

/// What quiesce and restore need from the engine. Implemented by [`Engine`]; tests may fake it.
#[async_trait]
pub trait Runtime: Send + Sync {
    async fn state(&self, id: &str) -> Result<ContainerState, DockerError>;
    async fn pause(&self, id: &str) -> Result<(), DockerError>;
    async fn unpause(&self, id: &str) -> Result<(), DockerError>;
    /// Stop with a grace period before SIGKILL.
    async fn stop(&self, id: &str, timeout_s: u32) -> Result<(), DockerError>;
    async fn start(&self, id: &str) -> Result<(), DockerError>;
    /// What ties the container to others (labels, network mode), read by quiesce to order its holds. The
    /// default knows nothing, which keeps the given order.
    async fn links(&self, id: &str) -> Result<ContainerLinks, DockerError> {
        let _ = id;
        Ok(ContainerLinks::default())
    }
    /// SIGKILL the processes of a command (exec) a dead run left running, when this host can see them
    /// (`Engine::kill_left_exec`). The default cannot.
    async fn kill_left_exec(&self, exec_id: &str) -> Killed {
        let _ = exec_id;
        Killed::NotLocal("this runtime cannot kill commands".into())
    }
    /// Run `argv` (as `user`) in the running container `id`, killed after `timeout`: its exit code (`None`
    /// when it had none, e.g. killed). Recover runs a post-backup hook a dead run owed with it. The default
    /// cannot.
    async fn run_command(
        &self,
        id: &str,
        argv: &[String],
        user: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<Option<i64>, DockerError> {
        let _ = (id, argv, user, timeout);
        Err(DockerError::Api {
            action: "running a command".into(),
            message: "this runtime cannot run commands".into(),
        })
    }
    /// Remove a helper container a dead run left, backup's or restore's (`helper.rs`; only one labelled as a
    /// helper; forced). `Ok(false)`: it was not there. The default cannot.
    async fn remove_left_helper(&self, name: &str) -> Result<bool, DockerError> {
        Err(DockerError::Api {
            action: format!("removing helper container {name}"),
            message: "this runtime cannot remove containers".into(),
        })
    }
    /// Finish a restore in place through the engine that a dead run left half-made: make volume `to` equal to
    /// volume `from` again with `voltar engine-mirror` from `image` in the helper container `name` (removed
    /// afterwards; `helper.rs` [`Engine::run_mirror`]). The default cannot.
    async fn redo_mirror(
        &self,
        name: &str,
        image: &str,
        from: &str,
        to: &str,
    ) -> Result<(), DockerError> {
        let _ = (name, image, from);
        Err(DockerError::Api {
            action: format!("restoring volume {to}"),
            message: "this runtime cannot run containers".into(),
        })
    }
    /// A Swarm service by id, read now (mode, replicas, spec version).
    async fn service(&self, id: &str) -> Result<ServiceInfo, DockerError> {
        Err(no_swarm(id))
    }
    /// Set a replicated service's replica count (retrying when the spec changed under us); returns at once,
    /// the orchestrator starts or stops the tasks afterwards.
    async fn scale_service(&self, id: &str, replicas: u64) -> Result<(), DockerError> {
        let _ = replicas;
        Err(no_swarm(id))
    }
    /// Names of the service's task containers on this engine that are up (running, paused or restarting): the
    /// ones that may still write to its volumes.
    async fn service_tasks_up(&self, id: &str) -> Result<Vec<String>, DockerError> {
        Err(no_swarm(id))
    }
    /// Remove a volume a dead restore created and did not finish (not forced: refused while a container uses
    /// it). The default cannot.
    async fn remove_left_volume(&self, name: &str) -> Result<(), DockerError> {
        Err(DockerError::Api {
            action: format!("removing volume {name}"),
            message: "this runtime cannot remove volumes".into(),
        })
    }
}

/// What a runtime without Swarm support answers.
fn no_swarm(id: &str) -> DockerError {
    DockerError::Api {
        action: format!("reading swarm service {id}"),
        message: "this runtime has no swarm services".into(),
    }
}

/// A container's ties to other containers, as far as quiesce ordering needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerLinks {
    pub labels: BTreeMap<String, String>,
    /// `HostConfig.NetworkMode`, e.g. `bridge` or `container:<id or name>`.
    pub network_mode: Option<String>,
}

/// The container voltar itself runs in, when it runs in one of this engine's: named by the hidden
/// `VOLTAR_SELF_CONTAINER` (tests), else found when `/.dockerenv` exists or the cgroup says docker, by a container
/// id in `/proc/self/mountinfo` (`…/containers/ID/hostname`) or the hostname (Docker sets it to the id's first 12
/// digits).
pub fn own_container(containers: &[ContainerInfo]) -> Option<&ContainerInfo> {
    let hints = own_container_hints();
    containers.iter().find(|c| {
        hints
            .iter()
            .any(|h| c.name == *h || (h.len() >= 12 && c.id.starts_with(h.as_str())))
    })
}

fn own_container_hints() -> Vec<String> {
    if let Ok(v) = std::env::var("VOLTAR_SELF_CONTAINER") {
        return vec![v];
    }
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if !std::path::Path::new("/.dockerenv").exists() && !cgroup.contains("docker") {
        return vec![];
    }
    let mut hints =
        container_ids_in(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    hints.extend(container_ids_in(&cgroup));
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if host.len() == 12 && host.bytes().all(|b| b.is_ascii_hexdigit()) {
        hints.push(host);
    }
    hints
}

/// Container ids (64 hex digits after `containers/` or `docker-`/`docker/`) in `/proc/self/mountinfo` or
/// `/proc/self/cgroup` text.
fn container_ids_in(text: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for marker in ["/containers/", "docker-", "/docker/"] {
        for (i, _) in text.match_indices(marker) {
            let id: String = text[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            if id.len() == 64 && !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

#[cfg(test)]
mod own_tests {
    /// The ids a container sees of itself: the hostname file Docker bind-mounts, and a cgroup v1 path.
    #[test]
    fn container_ids_are_found_in_mountinfo_and_cgroup() {
        let id = "3f2a".repeat(16);
        let mountinfo = format!(
            "651 640 8:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw\n\
             652 640 8:1 /var/lib/docker/volumes/x/_data /data rw - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(super::container_ids_in(&mountinfo), vec![id.clone()]);
        assert_eq!(
            super::container_ids_in(&format!(
                "12:pids:/docker/{id}\n0::/system.slice/docker-{id}.scope\n"
            )),
            vec![id]
        );
        assert!(super::container_ids_in("0::/user.slice\n").is_empty());
    }
}
