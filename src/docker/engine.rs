//! The Docker Engine behind the plain types of [`crate::docker`]: the one file that uses bollard.
//!
//! Design:
//! * **Endpoint like the docker CLI.** An explicit host (config / `--docker-host`) wins, then `DOCKER_HOST`, then
//!   `unix:///var/run/docker.sock`. `tcp://` speaks plain HTTP (default port 2375), or TLS when
//!   `DOCKER_TLS_VERIFY` or `DOCKER_TLS` is non-empty (default port 2376); `https://` is always TLS; `http://` is
//!   plain HTTP. `ssh://` is refused with a clear message (a socket forwarded with `ssh -L` works). Docker
//!   contexts are not read.
//! * **TLS like the docker CLI**: the files `ca.pem`, `cert.pem` and `key.pem` in `DOCKER_CERT_PATH` (default
//!   `DOCKER_CONFIG`, else `~/.docker`). They are checked before connecting, so a missing or unreadable one is
//!   named with the fix instead of surfacing as a handshake failure. Differences from the CLI: the engine's
//!   certificate is always verified (the CLI skips that for `DOCKER_TLS` without `DOCKER_TLS_VERIFY`), and
//!   bollard trusts the system's root certificates besides `ca.pem`. rustls with the aws-lc-rs provider, which
//!   the S3 client already builds.
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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerSummary, MountPoint, Volume, VolumeCreateOptions};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptions, RemoveVolumeOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};

use super::ssh::{SshBridge, SshDest};
use super::{
    ContainerInfo, ContainerState, Discovery, DockerError, MountInfo, MountKind, Runtime,
    VolumeInfo,
};

/// Where the docker CLI looks when nothing is configured.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The endpoint when none is configured: the system engine's socket; when there is none, a rootless engine's
/// (`$XDG_RUNTIME_DIR/docker.sock`, where `dockerd-rootless.sh` puts it) if that exists.
fn default_host(env: &dyn Fn(&str) -> Option<String>, system: &Path) -> String {
    if !system.exists() {
        if let Some(dir) = env("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            let rootless = Path::new(&dir).join("docker.sock");
            if rootless.exists() {
                return format!("unix://{}", rootless.display());
            }
        }
    }
    format!("unix://{}", system.display())
}

/// Deadline for connecting, negotiating the API version and the first ping.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline for an ordinary API call (bollard's own default).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to one Docker Engine, API version already negotiated.
#[derive(Clone, Debug)]
pub struct Engine {
    pub(super) docker: Docker,
    endpoint: String,
    /// For an `ssh://` endpoint: the local socket whose connections ssh carries to the remote engine.
    _bridge: Option<Arc<SshBridge>>,
}

/// How to reach the engine, parsed from a `DOCKER_HOST`-style string.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    /// `host:port` for plain HTTP.
    Tcp(String),
    /// `host:port` over TLS with these client files.
    Tls {
        addr: String,
        files: TlsFiles,
    },
    /// Through `ssh … docker system dial-stdio` (see `ssh.rs`).
    Ssh(SshDest),
}

/// The files TLS needs, like the docker CLI's `--tlscacert`, `--tlscert`, `--tlskey` defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TlsFiles {
    /// The directory they come from, and what chose it (for messages).
    dir: PathBuf,
    dir_from: &'static str,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    /// `DOCKER_CERT_PATH`, else `DOCKER_CONFIG`, else `$HOME/.docker`.
    fn locate(env: &dyn Fn(&str) -> Option<String>) -> Option<TlsFiles> {
        let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let (dir, dir_from) = if let Some(d) = set("DOCKER_CERT_PATH") {
            (PathBuf::from(d), "DOCKER_CERT_PATH")
        } else if let Some(d) = set("DOCKER_CONFIG") {
            (PathBuf::from(d), "DOCKER_CONFIG")
        } else {
            (PathBuf::from(set("HOME")?).join(".docker"), "the default")
        };
        Some(TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
            dir_from,
        })
    }

    /// Every file must be readable PEM of the right kind. bollard reads the client key only during the handshake
    /// and, if that fails, silently connects without a client certificate, so the engine's refusal would hide the
    /// real cause: check first and name the file.
    fn check(&self, endpoint: &str) -> Result<(), DockerError> {
        let fix = format!(
            "put ca.pem (the CA that signed the engine's certificate), cert.pem and key.pem (a client certificate \
             and key the engine accepts) in {} ({}), or set DOCKER_CERT_PATH to the directory that holds them",
            self.dir.display(),
            self.dir_from
        );
        for (path, what, markers) in [
            (
                &self.ca,
                "CA certificate",
                &["-----BEGIN CERTIFICATE-----"][..],
            ),
            (
                &self.cert,
                "client certificate",
                &["-----BEGIN CERTIFICATE-----"][..],
            ),
            (
                &self.key,
                "client key",
                &["-----BEGIN ", "PRIVATE KEY-----"][..],
            ),
        ] {
            let problem = match std::fs::read(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
                Err(e) => format!("cannot be read: {e}"),
                Ok(data) => {
                    let text = String::from_utf8_lossy(&data);
                    if markers.iter().all(|m| text.contains(m)) {
                        continue;
                    }
                    format!("is not a PEM {what}")
                }
            };
            return Err(DockerError::Tls {
                endpoint: endpoint.to_string(),
                message: format!("the {what} {} {problem}: {fix}", path.display()),
            });
        }
        Ok(())
    }
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
        .unwrap_or_else(|| default_host(env, Path::new(DEFAULT_SOCKET)));
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
    // Like the docker CLI: any non-empty value turns TLS on.
    let tls_var = ["DOCKER_TLS_VERIFY", "DOCKER_TLS"]
        .into_iter()
        .find(|k| env(k).is_some_and(|v| !v.is_empty()));
    let (scheme, rest, tls) = if let Some(rest) = host.strip_prefix("tcp://") {
        ("tcp", rest, tls_var.is_some())
    } else if let Some(rest) = host.strip_prefix("https://") {
        ("https", rest, true)
    } else if let Some(rest) = host.strip_prefix("http://") {
        if let Some(var) = tls_var {
            return Err(unsupported(&format!(
                "{var} asks for TLS but http:// means plain HTTP: use tcp://HOST:2376 or https://HOST, \
                 or unset {var}"
            )));
        }
        ("http", rest, false)
    } else {
        ("", "", false)
    };
    if !scheme.is_empty() {
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(unsupported(&format!("expected {scheme}://HOST:PORT")));
        }
        // The docker CLI's default ports: 2376 for TLS, 2375 for plain HTTP.
        let addr = if rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            rest.to_string()
        } else {
            format!("{rest}:{}", if tls { 2376 } else { 2375 })
        };
        let endpoint = format!("{scheme}://{addr}");
        if !tls {
            return Ok((endpoint, Endpoint::Tcp(addr)));
        }
        let files = TlsFiles::locate(env).ok_or_else(|| DockerError::Tls {
            endpoint: endpoint.clone(),
            message:
                "cannot find the TLS certificates: set DOCKER_CERT_PATH to the directory holding \
                      ca.pem, cert.pem and key.pem (HOME is not set, so ~/.docker cannot be used)"
                    .to_string(),
        })?;
        return Ok((endpoint, Endpoint::Tls { addr, files }));
    }
    if let Some(rest) = host.strip_prefix("ssh://") {
        let dest = SshDest::parse(rest).map_err(|e| unsupported(&e))?;
        return Ok((host.clone(), Endpoint::Ssh(dest)));
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

/// Classify a failure on a TLS connection: rustls reports handshake and certificate problems as `InvalidData` I/O
/// errors; say that it was TLS and what to check. Anything else is [`unreachable`].
fn tls_failure(
    endpoint: &str,
    files: &TlsFiles,
    err: &(dyn std::error::Error + 'static),
) -> DockerError {
    if !has_io_kind(err, std::io::ErrorKind::InvalidData) {
        return unreachable(endpoint, err);
    }
    DockerError::Tls {
        endpoint: endpoint.to_string(),
        message: format!(
            "TLS handshake failed: {} (check that the engine serves TLS on this port, that {} is the CA that \
             signed its certificate for this host name, and that it accepts the client certificate {})",
            error_chain(err),
            files.ca.display(),
            files.cert.display()
        ),
    }
}

/// Whether an io::Error of `kind` is anywhere in the source chain. An io::Error wrapping another error hides that
/// error from `source()` (it returns the wrapped error's source), and hyper-rustls wraps the TLS error, an
/// `InvalidData` io::Error, in another io::Error: so the errors inside io::Errors are searched too.
fn has_io_kind(err: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == kind {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                if has_io_kind(inner, kind) {
                    return true;
                }
            }
        }
        cur = e.source();
    }
    false
}

/// "outer: inner: innermost", lowercase-first as our messages are, without repeating identical links.
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
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
        Self::connect_with_env(host, &|k: &str| std::env::var(k).ok()).await
    }

    /// [`Engine::connect`] with the environment as a parameter (tests must not change the process environment).
    async fn connect_with_env(
        host: Option<&str>,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<Engine, DockerError> {
        let (endpoint, target) = resolve_endpoint(host, env)?;
        let mut bridge = None;
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
            Endpoint::Ssh(dest) => {
                let b = SshBridge::start(dest, env("VOLTAR_SSH_COMMAND").as_deref())
                    .map_err(|e| unreachable(&endpoint, &e))?;
                let socket = b.socket();
                bridge = Some(Arc::new(b));
                Docker::connect_with_unix(
                    &socket.to_string_lossy(),
                    // ssh's own connect timeout is 10 s; the engine's answer comes after it.
                    CONNECT_TIMEOUT.as_secs() + 10,
                    API_DEFAULT_VERSION,
                )
            }
            Endpoint::Tls { addr, files } => {
                files.check(&endpoint)?;
                match Docker::connect_with_ssl(
                    addr,
                    &files.key,
                    &files.cert,
                    &files.ca,
                    CONNECT_TIMEOUT.as_secs(),
                    API_DEFAULT_VERSION,
                ) {
                    Ok(d) => Ok(d),
                    Err(e) => {
                        return Err(DockerError::Tls {
                            message: format!(
                                "cannot set up TLS with the files in {}: {}",
                                files.dir.display(),
                                error_chain(&e)
                            ),
                            endpoint,
                        })
                    }
                }
            }
        }
        .map_err(|e| unreachable(&endpoint, &e))?;
        let failed = |e: BollardError| match (&target, &bridge) {
            (Endpoint::Tls { files, .. }, _) => tls_failure(&endpoint, files, &e),
            // What ssh said (refused, permission denied, `docker: command not found`) rather than "connection
            // closed before message completed".
            (Endpoint::Ssh(_), Some(b)) if !b.said().is_empty() => DockerError::Ssh {
                endpoint: endpoint.clone(),
                message: b.said().trim_start_matches("ssh: ").to_string(),
            },
            _ => unreachable(&endpoint, &e),
        };
        let docker = docker.negotiate_version().await.map_err(failed)?;
        docker.ping().await.map_err(failed)?;
        Ok(Engine {
            docker: docker.with_timeout(CALL_TIMEOUT),
            endpoint,
            _bridge: bridge,
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

    /// The engine's name (`GET /info` `Name`): its host's name, which is also the node's hostname when the engine
    /// is in a swarm (what `{node}` in a target's prefix stands for). Not `node inspect`: only managers may call
    /// it, and a global service runs on workers too.
    pub async fn name(&self) -> Result<String, DockerError> {
        let info = self.docker.info().await.map_err(|e| {
            self.map_err("reading the engine's info", e, || DockerError::Api {
                action: "reading the engine's info".into(),
                message: "not found".into(),
            })
        })?;
        match info.name.filter(|n| !n.trim().is_empty()) {
            Some(n) => Ok(n),
            None => Err(DockerError::Api {
                action: "reading the engine's info".into(),
                message: "the engine reports no name".into(),
            }),
        }
    }

    /// Map a bollard error of `action` to ours; `not_found` decides what a 404 means.
    pub(super) fn map_err(
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
            .collect::<Vec<_>>();
        let services = self.services_of(&containers).await;
        Ok(Discovery {
            volumes,
            containers,
            services,
        })
    }

    /// The services of the task containers among `containers`, one `GET /services/{id}` each (nothing is asked
    /// when there is no task container, so an engine outside a swarm never sees a services call). A service that
    /// cannot be read (a worker node cannot read services, or it was removed meanwhile) is left out, and its tasks
    /// are planned like plain containers.
    async fn services_of(&self, containers: &[ContainerInfo]) -> Vec<super::ServiceInfo> {
        let ids: std::collections::BTreeSet<&str> = containers
            .iter()
            .filter_map(ContainerInfo::swarm_service_id)
            .collect();
        let mut out = Vec::new();
        for id in ids {
            match Runtime::service(self, id).await {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::warn!(service = id, error = %e, "cannot read the swarm service of a task container (voltar must run on a manager node to scale services); its tasks are planned like plain containers");
                }
            }
        }
        out
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

impl Engine {
    /// `GET /containers/{id}/json`; a container that is gone is [`DockerError::NoSuchContainer`].
    async fn inspect_container(
        &self,
        id: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, DockerError> {
        self.docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| {
                self.map_err(&format!("inspecting container {id}"), e, || {
                    DockerError::NoSuchContainer(id.to_string())
                })
            })
    }
}

/// How often an update is retried when the service's spec changed between our read and our write.
const SCALE_ATTEMPTS: u32 = 5;

fn service_info(s: bollard::models::Service) -> Result<super::ServiceInfo, String> {
    let id = s.id.unwrap_or_default();
    let version = s.version.and_then(|v| v.index).ok_or("no spec version")?;
    let spec = s.spec.ok_or("no spec")?;
    let mode = match spec.mode {
        Some(m) if m.global.is_some() => super::ServiceMode::Global,
        Some(m) if m.replicated.is_some() => super::ServiceMode::Replicated {
            replicas: m.replicated.and_then(|r| r.replicas).unwrap_or(1).max(0) as u64,
        },
        Some(m) if m.replicated_job.is_some() => super::ServiceMode::Other("replicated-job".into()),
        Some(m) if m.global_job.is_some() => super::ServiceMode::Other("global-job".into()),
        // The engine's default mode.
        _ => super::ServiceMode::Replicated { replicas: 1 },
    };
    let container_labels = spec
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    Ok(super::ServiceInfo {
        name: spec.name.unwrap_or_else(|| id.clone()),
        id,
        version,
        mode,
        labels: spec.labels.unwrap_or_default().into_iter().collect(),
        container_labels: container_labels.into_iter().collect(),
    })
}

impl Engine {
    async fn inspect_service_raw(&self, id: &str) -> Result<bollard::models::Service, DockerError> {
        self.docker
            .inspect_service(id, None::<bollard::query_parameters::InspectServiceOptions>)
            .await
            .map_err(|e| {
                self.map_err(&format!("reading swarm service {id}"), e, || {
                    DockerError::NoSuchService(id.to_string())
                })
            })
    }
}

#[async_trait]
impl Runtime for Engine {
    async fn remove_left_helper(&self, name: &str) -> Result<bool, DockerError> {
        self.remove_helper(name).await
    }

    async fn redo_mirror(
        &self,
        name: &str,
        image: &str,
        from: &str,
        to: &str,
    ) -> Result<(), DockerError> {
        let done = self.run_mirror(name, image, "recover", from, to).await;
        if let Err(e) = self.remove_helper(name).await {
            tracing::warn!(helper = %name, error = %e, "cannot remove the mirror container recover ran");
        }
        done
    }

    async fn service(&self, id: &str) -> Result<super::ServiceInfo, DockerError> {
        service_info(self.inspect_service_raw(id).await?).map_err(|m| DockerError::Api {
            action: format!("reading swarm service {id}"),
            message: m,
        })
    }

    async fn scale_service(&self, id: &str, replicas: u64) -> Result<(), DockerError> {
        let action = format!("scaling swarm service {id} to {replicas}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The whole spec goes back with only the replica count changed, naming the version it was read at:
            // the engine refuses the write if anyone changed the service in between, and we read it again.
            let svc = self.inspect_service_raw(id).await?;
            let version = svc.version.as_ref().and_then(|v| v.index).unwrap_or(0);
            let mut spec = svc.spec.unwrap_or_default();
            match spec.mode.as_mut().and_then(|m| m.replicated.as_mut()) {
                Some(r) => r.replicas = Some(i64::try_from(replicas).unwrap_or(i64::MAX)),
                None => {
                    return Err(DockerError::Api {
                        action,
                        message: "not a replicated service: only replicated services can be scaled"
                            .into(),
                    })
                }
            }
            let opts = bollard::query_parameters::UpdateServiceOptionsBuilder::new()
                .version(i32::try_from(version).map_err(|_| DockerError::Api {
                    action: action.clone(),
                    message: format!("spec version {version} does not fit the API's version field"),
                })?)
                .build();
            match self.docker.update_service(id, spec, opts, None).await {
                Ok(_) => return Ok(()),
                // "update out of sequence": the spec changed since we read it.
                Err(BollardError::DockerResponseServerError { message, .. })
                    if message.contains("out of sequence") && attempt < SCALE_ATTEMPTS =>
                {
                    tracing::debug!(
                        service = id,
                        attempt,
                        "service changed while scaling it; reading it again"
                    );
                }
                Err(e) => {
                    return Err(
                        self.map_err(&action, e, || DockerError::NoSuchService(id.to_string()))
                    )
                }
            }
        }
    }

    async fn service_tasks_up(&self, id: &str) -> Result<Vec<String>, DockerError> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={id}", super::LABEL_SWARM_SERVICE_ID)],
        )]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| {
                self.map_err("listing containers", e, || DockerError::Api {
                    action: "listing containers".into(),
                    message: "not found".into(),
                })
            })?;
        Ok(list
            .into_iter()
            .map(container_info)
            .filter(|c| {
                matches!(
                    c.state,
                    ContainerState::Running | ContainerState::Paused | ContainerState::Restarting
                )
            })
            .map(|c| c.name)
            .collect())
    }

    async fn state(&self, id: &str) -> Result<ContainerState, DockerError> {
        let c = self.inspect_container(id).await?;
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

    async fn links(&self, id: &str) -> Result<super::ContainerLinks, DockerError> {
        let c = self.inspect_container(id).await?;
        Ok(super::ContainerLinks {
            labels: c
                .config
                .and_then(|cfg| cfg.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            network_mode: c.host_config.and_then(|h| h.network_mode),
        })
    }

    async fn kill_left_exec(&self, exec_id: &str) -> super::Killed {
        Engine::kill_left_exec(self, exec_id).await
    }

    async fn remove_left_volume(&self, name: &str) -> Result<(), DockerError> {
        self.remove_volume(name).await
    }

    async fn run_command(
        &self,
        id: &str,
        argv: &[String],
        user: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<i64>, DockerError> {
        let spec = super::ExecSpec {
            argv: argv.to_vec(),
            user: user.map(String::from),
            env: vec![],
            timeout,
        };
        let never = tokio_util::sync::CancellationToken::new();
        let o = self
            .exec(id, &spec, super::ExecStdout::Capture, &never)
            .await?;
        Ok(o.exit_code)
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

    /// No DOCKER_HOST and no system socket: a rootless engine's socket in `$XDG_RUNTIME_DIR` is used when it is
    /// there; otherwise (or with a system socket) the system socket, as the docker CLI does.
    #[test]
    fn a_rootless_engine_is_found_when_there_is_no_system_socket() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).unwrap();
        let missing = dir.path().join("var-run-docker.sock");
        let xdg = runtime.display().to_string();
        let env = move |k: &str| (k == "XDG_RUNTIME_DIR").then(|| xdg.clone());
        // Nothing in XDG_RUNTIME_DIR: the system default, named in the error that follows.
        assert_eq!(
            default_host(&env, &missing),
            format!("unix://{}", missing.display())
        );
        let rootless = runtime.join("docker.sock");
        let _l = std::os::unix::net::UnixListener::bind(&rootless).unwrap();
        assert_eq!(
            default_host(&env, &missing),
            format!("unix://{}", rootless.display())
        );
        // A system engine wins.
        let system = dir.path().join("system.sock");
        let _s = std::os::unix::net::UnixListener::bind(&system).unwrap();
        assert_eq!(
            default_host(&env, &system),
            format!("unix://{}", system.display())
        );
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
    fn endpoint_tls_like_the_docker_cli() {
        let tls = |host: &str, env: &'static [(&'static str, &'static str)]| match resolve_endpoint(
            Some(host),
            &env_of(env),
        )
        .unwrap()
        {
            (ep, Endpoint::Tls { addr, files }) => (ep, addr, files),
            other => panic!("{host} {env:?}: not TLS: {other:?}"),
        };
        let (ep, addr, files) = tls(
            "tcp://h",
            &[("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", "/certs")],
        );
        assert_eq!((ep.as_str(), addr.as_str()), ("tcp://h:2376", "h:2376"));
        assert_eq!(files.ca, PathBuf::from("/certs/ca.pem"));
        assert_eq!(files.cert, PathBuf::from("/certs/cert.pem"));
        assert_eq!(files.key, PathBuf::from("/certs/key.pem"));
        // DOCKER_TLS also turns TLS on; the cert dir falls back to DOCKER_CONFIG, then ~/.docker.
        let (_, addr, files) = tls(
            "tcp://h:1234",
            &[
                ("DOCKER_TLS", "1"),
                ("DOCKER_CONFIG", "/cfg"),
                ("HOME", "/home/u"),
            ],
        );
        assert_eq!(addr, "h:1234");
        assert_eq!(files.dir, PathBuf::from("/cfg"));
        let (ep, addr, files) = tls("https://h", &[("HOME", "/home/u")]);
        assert_eq!((ep.as_str(), addr.as_str()), ("https://h:2376", "h:2376"));
        assert_eq!(files.dir, PathBuf::from("/home/u/.docker"));
        // An empty DOCKER_TLS_VERIFY is off, like the CLI.
        let (_, t) =
            resolve_endpoint(Some("tcp://h"), &env_of(&[("DOCKER_TLS_VERIFY", "")])).unwrap();
        assert_eq!(t, Endpoint::Tcp("h:2375".into()));
        // http:// with TLS asked for is a contradiction, said as such.
        let err =
            resolve_endpoint(Some("http://h"), &env_of(&[("DOCKER_TLS_VERIFY", "1")])).unwrap_err();
        assert!(err.to_string().contains("DOCKER_TLS_VERIFY"), "{err}");
        // Nowhere to look for the files.
        let err = resolve_endpoint(Some("https://h"), &env_of(&[])).unwrap_err();
        assert!(matches!(err, DockerError::Tls { .. }), "{err:?}");
        assert!(err.to_string().contains("DOCKER_CERT_PATH"), "{err}");
    }

    #[test]
    fn endpoint_ssh_is_parsed_and_unknown_schemes_are_refused_with_the_reason() {
        let (endpoint, target) = resolve_endpoint(Some("ssh://me@h:2222"), &env_of(&[])).unwrap();
        assert_eq!(endpoint, "ssh://me@h:2222");
        assert!(
            matches!(&target, Endpoint::Ssh(d) if d.destination == "me@h" && d.port == Some(2222)),
            "{target:?}"
        );
        let err = resolve_endpoint(Some("ssh://me@h:x"), &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("`x` is not a port"), "{err}");
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

    // -----------------------------------------------------------------------------------------------------------
    // TLS against a local `openssl s_server` (no second dockerd: the shared engine stays untouched)

    /// An env for `connect_with_env`: the pairs given, nothing else.
    fn env_owned(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> + Sync {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    fn have_openssl() -> bool {
        let ok = std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "openssl is needed for the TLS tests"
            );
            eprintln!("SKIPPING: openssl not installed");
        }
        ok
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate signed by it (`ca.pem`, `cert.pem`,
    /// `key.pem` as the docker CLI names them, plus `server-*.pem`), and in `other/` a client pair from another CA.
    fn make_certs(dir: &std::path::Path) {
        let script = r#"set -e
k() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
sign() { # csr-key subject ext ca ca-key out
  openssl req -new -key "$1" -out t.csr -subj "$2"
  printf "$3" > t.ext
  openssl x509 -req -in t.csr -CA "$4" -CAkey "$5" -CAcreateserial -out "$6" -days 2 -extfile t.ext
}
k ca-key.pem
openssl req -x509 -new -key ca-key.pem -out ca.pem -days 2 -subj /CN=voltar-test-ca
k server-key.pem
sign server-key.pem /CN=127.0.0.1 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' ca.pem ca-key.pem server-cert.pem
k key.pem
sign key.pem /CN=voltar-client 'extendedKeyUsage=clientAuth\n' ca.pem ca-key.pem cert.pem
mkdir other
k other/ca-key.pem
openssl req -x509 -new -key other/ca-key.pem -out other/ca.pem -days 2 -subj /CN=other-ca
k other/key.pem
sign other/key.pem /CN=intruder 'extendedKeyUsage=clientAuth\n' other/ca.pem other/ca-key.pem other/cert.pem
"#;
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// `openssl s_server` requiring a client certificate signed by `dir/ca.pem` (`-Verify` asks for one,
    /// `-verify_return_error` makes a bad one fatal: without it s_server only logs the failure) and serving the files of
    /// `dir/www` over HTTP (`-WWW`): `version` and `_ping`, which is all `connect` asks for.
    struct TlsServer {
        child: std::process::Child,
        port: u16,
    }

    impl TlsServer {
        fn start(dir: &std::path::Path) -> TlsServer {
            let www = dir.join("www");
            std::fs::create_dir_all(&www).unwrap();
            std::fs::write(
                www.join("version"),
                r#"{"Version":"20.10.99","ApiVersion":"1.41","MinAPIVersion":"1.12"}"#,
            )
            .unwrap();
            std::fs::write(www.join("_ping"), "OK").unwrap();
            let port = free_port();
            let child = std::process::Command::new("openssl")
                .args([
                    "s_server",
                    "-quiet",
                    "-WWW",
                    "-Verify",
                    "1",
                    "-verify_return_error",
                ])
                .arg("-accept")
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(dir.join("server-cert.pem"))
                .arg("-key")
                .arg(dir.join("server-key.pem"))
                .arg("-CAfile")
                .arg(dir.join("ca.pem"))
                .current_dir(&www)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut server = TlsServer { child, port };
            let t = std::time::Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    server.child.try_wait().unwrap().is_none(),
                    "openssl s_server exited"
                );
                assert!(t.elapsed() < Duration::from_secs(10), "s_server not up");
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn tls_with_client_certificates_connects() {
        if !have_openssl() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        make_certs(d.path());
        let server = TlsServer::start(d.path());
        let certs = d.path().to_string_lossy().into_owned();
        let host = format!("tcp://127.0.0.1:{}", server.port);
        let env = env_owned(vec![
            ("DOCKER_TLS_VERIFY", "1".into()),
            ("DOCKER_CERT_PATH", certs.clone()),
        ]);
        // The server refuses connections without a client certificate from its CA (-Verify), so getting the
        // version and the ping back proves the whole path: handshake, both certificates, HTTP over TLS.
        let engine = Engine::connect_with_env(Some(&host), &env)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(engine.api_version(), "1.41");
        assert_eq!(engine.endpoint(), host);
        // https:// needs no DOCKER_TLS_VERIFY.
        let env = env_owned(vec![("DOCKER_CERT_PATH", certs)]);
        let host = format!("https://127.0.0.1:{}", server.port);
        Engine::connect_with_env(Some(&host), &env)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn tls_failures_say_what_to_fix() {
        if !have_openssl() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        make_certs(d.path());
        let server = TlsServer::start(d.path());
        let host = format!("tcp://127.0.0.1:{}", server.port);
        let connect = |certs: std::path::PathBuf, host: String| async move {
            let env = env_owned(vec![
                ("DOCKER_TLS_VERIFY", "1".into()),
                ("DOCKER_CERT_PATH", certs.to_string_lossy().into_owned()),
            ]);
            let t = std::time::Instant::now();
            let err = match Engine::connect_with_env(Some(&host), &env).await {
                Ok(_) => panic!("connected to {host} with the files in {}", certs.display()),
                Err(e) => e,
            };
            assert!(t.elapsed() < Duration::from_secs(10), "{err}");
            assert!(matches!(err, DockerError::Tls { .. }), "{err:?}");
            err.to_string()
        };

        // Missing files, one at a time: each is named, with the fix.
        let partial = d.path().join("partial");
        std::fs::create_dir(&partial).unwrap();
        for (present, missing) in [
            (&[][..], "ca.pem"),
            (&["ca.pem"], "cert.pem"),
            (&["ca.pem", "cert.pem"], "key.pem"),
        ] {
            for f in present {
                std::fs::copy(d.path().join(f), partial.join(f)).unwrap();
            }
            let msg = connect(partial.clone(), host.clone()).await;
            let path = partial.join(missing).display().to_string();
            assert!(msg.contains(&format!("{path} does not exist")), "{msg}");
            assert!(msg.contains("DOCKER_CERT_PATH"), "{msg}");
        }
        // A key file that is not a key.
        std::fs::copy(d.path().join("cert.pem"), partial.join("key.pem")).unwrap();
        let msg = connect(partial.clone(), host.clone()).await;
        assert!(msg.contains("key.pem is not a PEM client key"), "{msg}");

        // A directory of copies: `ca.pem` from `ca_from`, the client pair from `pair_from`.
        let mix = |name: &str, ca_from: &str, pair_from: &str| {
            let dir = d.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            let src = |from: &str, f: &str| d.path().join(from).join(f);
            std::fs::copy(src(ca_from, "ca.pem"), dir.join("ca.pem")).unwrap();
            std::fs::copy(src(pair_from, "cert.pem"), dir.join("cert.pem")).unwrap();
            std::fs::copy(src(pair_from, "key.pem"), dir.join("key.pem")).unwrap();
            dir
        };

        // A client certificate from another CA: the server refuses it.
        let msg = connect(mix("intruder", ".", "other"), host.clone()).await;
        assert!(msg.contains("TLS handshake failed"), "{msg}");

        // The engine's certificate is not signed by our ca.pem.
        let wrong_ca = mix("wrong-ca", "other", ".");
        let msg = connect(wrong_ca, host.clone()).await;
        assert!(
            msg.contains("TLS handshake failed") && msg.contains("certificate"),
            "{msg}"
        );

        // TLS to a port that speaks plain HTTP (a 2375 engine under DOCKER_TLS_VERIFY).
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = plain.local_addr().unwrap().port();
        let answer = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut c, _)) = plain.accept().await {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        let msg = connect(d.path().to_path_buf(), format!("tcp://127.0.0.1:{port}")).await;
        answer.abort();
        assert!(
            msg.contains("TLS handshake failed") && msg.contains("serves TLS on this port"),
            "{msg}"
        );
    }
}
