//! The Docker Engine behind the plain types of [`crate::docker`]: the one file that uses bollard.
//!
//! Design:
//! * **Endpoint like the docker CLI.** An explicit host (config / `--docker-host`) wins, then `DOCKER_HOST`, then
//!   `unix:///var/run/docker.sock`. `tcp://` / `http://` speak plain HTTP; TLS (`DOCKER_TLS_VERIFY`, `https://`)
//!   and `ssh://` are refused with a clear message because this build of bollard has neither feature (we keep the
//!   dependency tree small; a socket forwarded with `ssh -L` works). Docker contexts are not read.
//! * **Negotiated API version.** bollard 0.19 speaks API 1.49 by default; engines in the field (20.10 here) speak
//!   1.41, so every connection negotiates down before the first real call, then pings.
//! * **Errors say where.** A missing socket or refused connection is [`DockerError::Unreachable`] naming the
//!   endpoint, `EACCES` is [`DockerError::PermissionDenied`]; for unix sockets we connect once ourselves before
//!   handing the path to bollard, because bollard reports a missing socket and a denied one the same way.
//! * **Timeouts.** Connecting and pinging get a short deadline (a hung engine must not hang a backup run); other
//!   calls get bollard's two minutes, and a stop gets its grace period on top, since the engine answers a stop only
//!   when the container is down.
//! * **No bollard type in a public signature**: everything is converted to the types in `docker/mod.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerSummary, MountPoint, Volume, VolumeCreateOptions};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptions, RemoveVolumeOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};

use super::{
    ContainerInfo, ContainerState, Discovery, DockerError, MountInfo, MountKind, Runtime,
    VolumeInfo,
};

/// Where the docker CLI looks when nothing is configured.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Deadline for connecting, negotiating the API version and the first ping.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline for an ordinary API call (bollard's own default).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to one Docker Engine, API version already negotiated.
#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    endpoint: String,
}

/// How to reach the engine, parsed from a `DOCKER_HOST`-style string.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    /// `host:port` for plain HTTP.
    Tcp(String),
}

/// Pick the endpoint like the docker CLI: explicit host, else `DOCKER_HOST`, else the default socket. `env` is a
/// parameter so the choice can be tested without touching the process environment.
fn resolve_endpoint(
    explicit: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Endpoint), DockerError> {
    let host = explicit
        .map(str::to_string)
        .filter(|h| !h.trim().is_empty())
        .or_else(|| env("DOCKER_HOST").filter(|h| !h.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_HOST.to_string());
    let host = host.trim().to_string();
    let unsupported = |message: &str| DockerError::Unsupported {
        endpoint: host.clone(),
        message: message.to_string(),
    };
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(unsupported("the unix socket path is empty"));
        }
        return Ok((host.clone(), Endpoint::Unix(PathBuf::from(path))));
    }
    if let Some(rest) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
    {
        // The docker CLI switches to TLS for any non-empty DOCKER_TLS_VERIFY; silently talking plain HTTP to a TLS
        // port would only produce a confusing protocol error, so say what is missing instead.
        if env("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty()) {
            return Err(unsupported(
                "DOCKER_TLS_VERIFY asks for TLS, which this build of voltar does not support \
                 (use the unix socket, or forward it with `ssh -L`)",
            ));
        }
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(unsupported("expected tcp://HOST:PORT"));
        }
        // The docker CLI's default plain-HTTP port.
        let addr = if rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            rest.to_string()
        } else {
            format!("{rest}:2375")
        };
        return Ok((format!("tcp://{addr}"), Endpoint::Tcp(addr)));
    }
    if host.starts_with("https://") {
        return Err(unsupported(
            "TLS endpoints are not supported by this build of voltar (use the unix socket, or forward it with `ssh -L`)",
        ));
    }
    if host.starts_with("ssh://") {
        return Err(unsupported(
            "ssh endpoints are not supported; forward the socket with `ssh -L /tmp/docker.sock:/var/run/docker.sock HOST` \
             and set DOCKER_HOST=unix:///tmp/docker.sock",
        ));
    }
    Err(unsupported(
        "unknown scheme (use unix:///path/to/docker.sock or tcp://HOST:PORT)",
    ))
}

/// Classify a failure to reach the engine.
fn unreachable(endpoint: &str, err: &(dyn std::error::Error + 'static)) -> DockerError {
    if has_io_kind(err, std::io::ErrorKind::PermissionDenied) {
        return DockerError::PermissionDenied {
            endpoint: endpoint.to_string(),
        };
    }
    DockerError::Unreachable {
        endpoint: endpoint.to_string(),
        message: error_chain(err),
    }
}

/// Whether an io::Error of `kind` is anywhere in the source chain.
fn has_io_kind(err: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// "outer: inner: innermost", lowercase-first as our messages are, without repeating identical links.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// The status code of an error response from the engine, if that is what `err` is.
fn status_of(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl Engine {
    /// Connect like the docker CLI does (see the module docs), negotiate the API version and ping.
    pub async fn connect(host: Option<&str>) -> Result<Engine, DockerError> {
        let env = |k: &str| std::env::var(k).ok();
        let (endpoint, target) = resolve_endpoint(host, &env)?;
        let docker = match &target {
            Endpoint::Unix(path) => {
                // bollard only checks that the path exists; connecting ourselves tells "not there" / "refused"
                // apart from "not allowed" and names the socket either way.
                match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                    .await
                {
                    Ok(Ok(_probe)) => {}
                    Ok(Err(e)) => return Err(unreachable(&endpoint, &e)),
                    Err(_) => {
                        return Err(DockerError::Unreachable {
                            endpoint,
                            message: "timed out connecting to the socket".to_string(),
                        })
                    }
                }
                let path = path.to_string_lossy();
                Docker::connect_with_unix(&path, CONNECT_TIMEOUT.as_secs(), API_DEFAULT_VERSION)
            }
            Endpoint::Tcp(addr) => {
                Docker::connect_with_http(addr, CONNECT_TIMEOUT.as_secs(), API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| unreachable(&endpoint, &e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(&endpoint, &e))?;
        docker
            .ping()
            .await
            .map_err(|e| unreachable(&endpoint, &e))?;
        Ok(Engine {
            docker: docker.with_timeout(CALL_TIMEOUT),
            endpoint,
        })
    }

    /// The endpoint this engine was reached at, e.g. `unix:///var/run/docker.sock`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The API version in use after negotiation, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        let v = self.docker.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }

    /// Map a bollard error of `action` to ours; `not_found` decides what a 404 means.
    fn map_err(
        &self,
        action: &str,
        err: BollardError,
        not_found: impl FnOnce() -> DockerError,
    ) -> DockerError {
        match &err {
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } => not_found(),
            BollardError::DockerResponseServerError { message, .. } => DockerError::Api {
                action: action.to_string(),
                message: message.clone(),
            },
            // Not `Api`: the engine may still carry the request out. Callers (quiesce) must treat the outcome as
            // unknown and look at the live state, never assume "refused".
            BollardError::RequestTimeoutError => DockerError::Unreachable {
                endpoint: self.endpoint.clone(),
                message: format!("no answer in time while {action} (is the engine overloaded?)"),
            },
            BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }
            | BollardError::SocketNotFoundError(_) => unreachable(&self.endpoint, &err),
            _ => DockerError::Api {
                action: action.to_string(),
                message: error_chain(&err),
            },
        }
    }

    /// All volumes and all containers (running or not), with their mounts and labels.
    pub async fn discover(&self) -> Result<Discovery, DockerError> {
        let volumes = self
            .docker
            .list_volumes(None::<ListVolumesOptions>)
            .await
            .map_err(|e| {
                self.map_err("listing volumes", e, || DockerError::Api {
                    action: "listing volumes".into(),
                    message: "not found".into(),
                })
            })?
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(volume_info)
            .collect();
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
            .await
            .map_err(|e| {
                self.map_err("listing containers", e, || DockerError::Api {
                    action: "listing containers".into(),
                    message: "not found".into(),
                })
            })?
            .into_iter()
            .map(container_info)
            .collect();
        Ok(Discovery {
            volumes,
            containers,
        })
    }

    /// One volume by name.
    pub async fn inspect_volume(&self, name: &str) -> Result<VolumeInfo, DockerError> {
        self.docker
            .inspect_volume(name)
            .await
            .map(volume_info)
            .map_err(|e| {
                self.map_err(&format!("inspecting volume {name}"), e, || {
                    DockerError::NoSuchVolume(name.to_string())
                })
            })
    }

    /// Create a volume. The engine answers "created" for a name that already exists (same driver), so we look
    /// first: restore must never mistake an existing volume with data for a fresh one. A volume created by someone
    /// else between the look and the create is the remaining (tiny) window.
    pub async fn create_volume(
        &self,
        name: &str,
        driver: &str,
        driver_opts: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeInfo, DockerError> {
        match self.inspect_volume(name).await {
            Ok(_) => return Err(DockerError::VolumeExists(name.to_string())),
            Err(DockerError::NoSuchVolume(_)) => {}
            Err(e) => return Err(e),
        }
        let opts = VolumeCreateOptions {
            name: Some(name.to_string()),
            driver: Some(if driver.is_empty() { "local" } else { driver }.to_string()),
            driver_opts: Some(driver_opts.clone().into_iter().collect::<HashMap<_, _>>()),
            labels: Some(labels.clone().into_iter().collect::<HashMap<_, _>>()),
            cluster_volume_spec: None,
        };
        self.docker
            .create_volume(opts)
            .await
            .map(volume_info)
            .map_err(|e| {
                let action = format!("creating volume {name}");
                if status_of(&e) == Some(409) {
                    return DockerError::VolumeExists(name.to_string());
                }
                self.map_err(&action, e, || DockerError::Api {
                    action: format!("creating volume {name}"),
                    message: format!("volume driver {driver} not found"),
                })
            })
    }

    /// Remove a volume (not forced: the engine refuses while a container uses it).
    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.docker
            .remove_volume(
                name,
                Some(RemoveVolumeOptionsBuilder::new().force(false).build()),
            )
            .await
            .map_err(|e| {
                self.map_err(&format!("removing volume {name}"), e, || {
                    DockerError::NoSuchVolume(name.to_string())
                })
            })
    }
}

fn volume_info(v: Volume) -> VolumeInfo {
    VolumeInfo {
        name: v.name,
        driver: v.driver,
        mountpoint: PathBuf::from(v.mountpoint),
        labels: v.labels.into_iter().collect(),
        options: v.options.into_iter().collect(),
        scope: v
            .scope
            .map(|s| s.as_ref().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "local".to_string()),
    }
}

fn mount_info(m: MountPoint) -> MountInfo {
    let kind = match m.typ.as_ref().map(|t| t.as_ref().to_string()).as_deref() {
        Some("volume") => MountKind::Volume,
        Some("bind") => MountKind::Bind,
        Some(other) => MountKind::Other(other.to_string()),
        None => MountKind::Other(String::new()),
    };
    MountInfo {
        kind,
        name: m.name.filter(|n| !n.is_empty()),
        source: PathBuf::from(m.source.unwrap_or_default()),
        destination: m.destination.unwrap_or_default(),
        // When the engine does not say, assume read-write: quiescing a container needlessly costs a moment of
        // downtime, not quiescing a writer costs a torn backup.
        rw: m.rw.unwrap_or(true),
    }
}

fn container_info(c: ContainerSummary) -> ContainerInfo {
    let name = c
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name,
        image: c.image.unwrap_or_default(),
        state: ContainerState::parse(c.state.as_ref().map(|s| s.as_ref()).unwrap_or("")),
        labels: c.labels.unwrap_or_default().into_iter().collect(),
        mounts: c
            .mounts
            .unwrap_or_default()
            .into_iter()
            .map(mount_info)
            .collect(),
    }
}

#[async_trait]
impl Runtime for Engine {
    async fn state(&self, id: &str) -> Result<ContainerState, DockerError> {
        let c = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| {
                self.map_err(&format!("inspecting container {id}"), e, || {
                    DockerError::NoSuchContainer(id.to_string())
                })
            })?;
        let status = c
            .state
            .and_then(|s| s.status)
            .map(|s| s.as_ref().to_string())
            .unwrap_or_default();
        Ok(ContainerState::parse(&status))
    }

    async fn pause(&self, id: &str) -> Result<(), DockerError> {
        self.docker.pause_container(id).await.map_err(|e| {
            self.map_err(&format!("pausing container {id}"), e, || {
                DockerError::NoSuchContainer(id.to_string())
            })
        })
    }

    async fn unpause(&self, id: &str) -> Result<(), DockerError> {
        self.docker.unpause_container(id).await.map_err(|e| {
            self.map_err(&format!("unpausing container {id}"), e, || {
                DockerError::NoSuchContainer(id.to_string())
            })
        })
    }

    async fn stop(&self, id: &str, timeout_s: u32) -> Result<(), DockerError> {
        // The engine answers when the container is down, i.e. after up to `timeout_s` of grace: give the request
        // that long on top of the ordinary deadline.
        let docker = self
            .docker
            .clone()
            .with_timeout(CALL_TIMEOUT + Duration::from_secs(u64::from(timeout_s)));
        let t = i32::try_from(timeout_s).unwrap_or(i32::MAX);
        match docker
            .stop_container(id, Some(StopContainerOptionsBuilder::new().t(t).build()))
            .await
        {
            Ok(()) => Ok(()),
            // 304: already stopped. bollard passes 304 as success today; keep the rule explicit.
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(self.map_err(&format!("stopping container {id}"), e, || {
                DockerError::NoSuchContainer(id.to_string())
            })),
        }
    }

    async fn start(&self, id: &str) -> Result<(), DockerError> {
        match self
            .docker
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(self.map_err(&format!("starting container {id}"), e, || {
                DockerError::NoSuchContainer(id.to_string())
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn endpoint_default_is_the_local_socket() {
        let (ep, t) = resolve_endpoint(None, &env_of(&[])).unwrap();
        assert_eq!(ep, "unix:///var/run/docker.sock");
        assert_eq!(t, Endpoint::Unix(PathBuf::from("/var/run/docker.sock")));
    }

    #[test]
    fn endpoint_explicit_wins_over_docker_host() {
        let env = env_of(&[("DOCKER_HOST", "unix:///from/env.sock")]);
        let (ep, _) = resolve_endpoint(Some("unix:///explicit.sock"), &env).unwrap();
        assert_eq!(ep, "unix:///explicit.sock");
        let (ep, _) = resolve_endpoint(None, &env).unwrap();
        assert_eq!(ep, "unix:///from/env.sock");
        // An empty DOCKER_HOST counts as unset, like the CLI.
        let (ep, _) = resolve_endpoint(None, &env_of(&[("DOCKER_HOST", "")])).unwrap();
        assert_eq!(ep, DEFAULT_HOST);
    }

    #[test]
    fn endpoint_tcp_gets_the_default_port() {
        let (ep, t) = resolve_endpoint(Some("tcp://10.0.0.5"), &env_of(&[])).unwrap();
        assert_eq!(ep, "tcp://10.0.0.5:2375");
        assert_eq!(t, Endpoint::Tcp("10.0.0.5:2375".into()));
        let (_, t) = resolve_endpoint(Some("tcp://h:2377/"), &env_of(&[])).unwrap();
        assert_eq!(t, Endpoint::Tcp("h:2377".into()));
    }

    #[test]
    fn endpoint_tls_and_ssh_are_refused_with_the_reason() {
        let env = env_of(&[("DOCKER_TLS_VERIFY", "1")]);
        let err = resolve_endpoint(Some("tcp://h:2376"), &env).unwrap_err();
        assert!(matches!(err, DockerError::Unsupported { .. }), "{err:?}");
        assert!(err.to_string().contains("DOCKER_TLS_VERIFY"), "{err}");
        let err = resolve_endpoint(Some("ssh://me@h"), &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("ssh -L"), "{err}");
        let err = resolve_endpoint(Some("ftp://h"), &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("ftp://h"), "{err}");
    }

    #[test]
    fn eacces_anywhere_in_the_chain_is_permission_denied() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = unreachable("unix:///s.sock", &io);
        assert!(
            matches!(err, DockerError::PermissionDenied { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("unix:///s.sock"));
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = unreachable("unix:///s.sock", &io);
        assert!(matches!(err, DockerError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains("unix:///s.sock"));
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_names_it() {
        let err = Engine::connect(Some("unix:///nonexistent-voltar-test.sock"))
            .await
            .unwrap_err();
        assert!(matches!(err, DockerError::Unreachable { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent-voltar-test.sock"),
            "{err}"
        );
    }
}
