//! Helper containers: how voltar reads and writes a volume the engine does not let it see on this host's
//! filesystem (a remote engine, rootless Docker, Docker Desktop).
//!
//! A helper is a container that is CREATED and NEVER STARTED, with no network (`NetworkMode=none`), labelled
//! `voltar.helper=<run id>` (`put` for a restore's), named `voltar-helper-…`, and a command that does not exist, so
//! that starting it by mistake fails at once. The engine serves the archive API from a created container's
//! mounts, so nothing runs in it:
//! - reading ([`Access::Read`]): the volume mounted read-only at [`HELPER_MOUNT`];
//!   `GET /containers/{id}/archive?path=/voltar/src` streams it as a tar;
//! - writing ([`Access::Write`], a restore into a new volume): the volume mounted read-write at [`PUT_AT`];
//!   `PUT /containers/{id}/archive` extracts a tar into it.
//!
//! Both mounts are `NoCopy`, so the image's contents are never copied into an empty volume.
//!
//! What the engine's extraction keeps (Engine 20.10, checked by `tests/integration/engine_restore.rs`): names of
//! any length and bytes, file contents, modes with setuid/setgid/sticky, numeric owners (without `copyUIDGID`,
//! which would give everything the helper's user instead: not set here), mtimes with nanoseconds (directories'
//! too), symlinks, hardlinks, fifos and devices, `user.*` xattrs. It does not keep: the metadata of the volume's
//! root directory (the engine skips the `.` entry: the restore sets it with a second, one-entry archive), holes
//! (a sparse file is written out in full: same content, all blocks allocated), and the set-ID bits of a file with
//! several hard links (each link name is chowned, which clears them; the engine's chmod of a link entry looks for
//! its target in the wrong directory, so they are not set back: `archive::unpack::Forwarded::setid_linked`, and the
//! restore warns).
//!
//! One kind of helper IS started: a mirror container of a restore in place through the engine (`run_mirror`,
//! `probe_mirror`): made from `[docker] mirror-image` (voltar's own image) with its ENTRYPOINT replaced by
//! [`VOLTAR_BIN`] `engine-mirror`, the source volume read-only at [`MIRROR_FROM`] and the target at [`MIRROR_TO`],
//! no network, the same label; started, waited for (`POST /containers/{id}/wait`), its last lines read
//! (`GET /containers/{id}/logs`) for its error, removed with its anonymous volumes (`v=1`).
//!
//! Its image is never pulled: `[docker] helper-image` when set, else the image of a container that uses the
//! volume (it is on the engine: its container was made from it), else voltar's own image
//! (`voltar:<version>`) when the engine has it; none of them = an error naming `helper-image` and `docker load`,
//! before anything is quiesced.
//!
//! Removal (`DELETE /containers/{id}?force=1`) is the caller's on every path; the crash journal names each helper
//! before it is created, so `voltar recover` removes the ones a killed run left ([`Engine::remove_helper`] only
//! removes a container that carries the helper label).

use std::pin::Pin;

use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, Mount, MountTypeEnum, MountVolumeOptions,
};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, LogsOptions, RemoveContainerOptions,
    StartContainerOptions, UploadToContainerOptionsBuilder, WaitContainerOptions,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::engine::Engine;
use super::DockerError;

/// Where a helper container mounts the volume it reads. The engine's tar names begin with its base name.
pub const HELPER_MOUNT: &str = "/voltar/src";
/// Where a restore's helper container mounts the volume it writes.
pub const PUT_AT: &str = "/voltar-put";
/// A PUT lasts as long as its stream; the engine's ordinary call timeout would cut a large restore.
const PUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// What a helper container is for: how its volume is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read-only at [`HELPER_MOUNT`] (a backup through the engine).
    Read,
    /// Read-write at [`PUT_AT`] (a restore into a new volume through the engine).
    Write,
}
/// The label every helper container carries: its value is the run's id.
pub const LABEL_HELPER: &str = "voltar.helper";
/// The label of a restore's staging volume (restore in place through the engine): the target's name.
pub const LABEL_STAGING_OF: &str = "voltar.staging-of";
/// The label of the volume a restore in place through the engine keeps a target's previous contents in.
pub const LABEL_KEEP_OF: &str = "voltar.keep-of";
/// Helper container names begin with this.
pub const HELPER_PREFIX: &str = "voltar-helper-";
/// The command a helper is created with: never run (the container is never started), but the engine refuses to
/// create a container without one, and a scratch image has none.
const NEVER_RUN: &str = "/voltar-helper-is-never-started";

/// Where a mirror container (`voltar engine-mirror`, a restore in place through the engine) mounts the tree it
/// copies (read-only) and the volume it makes equal to it.
pub const MIRROR_FROM: &str = "/voltar/src";
pub const MIRROR_TO: &str = "/voltar/dst";
/// voltar's binary in its image; a mirror container runs it (the image's own ENTRYPOINT is not trusted).
pub const VOLTAR_BIN: &str = "/usr/local/bin/voltar";
/// The state dir voltar's image declares as a VOLUME.
const OWN_STATE_DIR: &str = "/var/lib/voltar";
/// The first word `voltar engine-mirror --probe` prints.
pub const MIRROR_PROBE_LINE: &str = "voltar-engine-mirror";
/// Lines of a mirror container's output kept for its error.
const LOG_TAIL: &str = "20";

/// How a started helper (a mirror) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelperExit {
    pub code: i64,
    /// The last lines it printed (stdout and stderr).
    pub output: String,
}

/// The bytes of the engine's tar of a helper's volume.
pub type ArchiveStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// The name of the `n`th helper container of run `run_id` (a name the engine accepts: `[a-zA-Z0-9_.-]`).
pub fn helper_name(run_id: &str, n: u32) -> String {
    let id: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{HELPER_PREFIX}{id}-{n}")
}

/// voltar's own image, as the release builds tag it.
pub fn own_image() -> String {
    format!("voltar:{}", env!("CARGO_PKG_VERSION"))
}

impl Engine {
    /// The image to create a helper for a volume used by `users` (container ids) from: see the module docs.
    pub async fn helper_image(
        &self,
        configured: Option<&str>,
        volume: &str,
        users: &[String],
    ) -> Result<String, DockerError> {
        if let Some(image) = configured {
            return match self.docker.inspect_image(image).await {
                Ok(_) => Ok(image.to_string()),
                Err(e) if status(&e) == Some(404) => Err(DockerError::Api {
                    action: format!("finding the helper image for volume {volume}"),
                    message: format!(
                        "[docker] helper-image `{image}` is not on the engine (voltar never pulls: `docker load` \
                         it there, or name an image the engine has)"
                    ),
                }),
                Err(e) => Err(self.map_err("inspecting the helper image", e, || {
                    DockerError::Api {
                        action: "inspecting the helper image".into(),
                        message: "not found".into(),
                    }
                })),
            };
        }
        for id in users {
            if let Ok(c) = self
                .docker
                .inspect_container(
                    id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            {
                if let Some(image) = c.image.filter(|i| !i.is_empty()) {
                    return Ok(image);
                }
            }
        }
        let own = own_image();
        match self.docker.inspect_image(&own).await {
            Ok(_) => Ok(own),
            Err(e) if status(&e) == Some(404) => Err(DockerError::Api {
                action: format!("finding an image for the helper container of volume {volume}"),
                message: format!(
                    "no container uses the volume and the engine has no {own} image; set [docker] helper-image \
                     to an image the engine has, or `docker load` voltar's image there (voltar never pulls)"
                ),
            }),
            Err(e) => Err(self.map_err("inspecting voltar's image", e, || DockerError::Api {
                action: "inspecting voltar's image".into(),
                message: "not found".into(),
            })),
        }
    }

    /// The image a mirror container is made from (`voltar engine-mirror` at [`VOLTAR_BIN`]): `[docker]
    /// mirror-image`, else the image of the container voltar runs in (`own_image_id`: then it is exactly this
    /// voltar), else `voltar:<version>`. Never pulled: one the engine lacks is an error naming the fixes.
    pub async fn mirror_image(
        &self,
        configured: Option<&str>,
        own_container_image: Option<&str>,
    ) -> Result<String, DockerError> {
        let image = configured
            .or(own_container_image)
            .map(str::to_string)
            .unwrap_or_else(own_image);
        match self.docker.inspect_image(&image).await {
            Ok(_) => Ok(image),
            Err(e) if status(&e) == Some(404) => Err(DockerError::Api {
                action: "finding the mirror image for a restore in place through the engine".into(),
                message: format!(
                    "the engine has no image `{image}` ([docker] mirror-image; voltar never pulls): build it with \
                     scripts/image.sh and load it there (`docker save {} | docker -H … load`), or restore with \
                     --to-volume NEW",
                    own_image()
                ),
            }),
            Err(e) => Err(self.map_err("inspecting the mirror image", e, || DockerError::Api {
                action: "inspecting the mirror image".into(),
                message: "not found".into(),
            })),
        }
    }

    /// Create the helper container `name` from `image` that runs `voltar <args>` ([`VOLTAR_BIN`], whatever the
    /// image's ENTRYPOINT) with `mounts` (volume, where, read-only), no network, labelled [`LABEL_HELPER`] =
    /// `label`; not started ([`Engine::run_helper`] starts it). Returns its id.
    pub async fn create_voltar_helper(
        &self,
        name: &str,
        image: &str,
        label: &str,
        args: &[&str],
        mounts: &[(&str, &str, bool)],
    ) -> Result<String, DockerError> {
        let action = format!("creating helper container {name}");
        let volumes = mounts.iter().map(|(volume, target, read_only)| Mount {
            target: Some(target.to_string()),
            source: Some(volume.to_string()),
            typ: Some(MountTypeEnum::VOLUME),
            read_only: Some(*read_only),
            volume_options: Some(MountVolumeOptions {
                no_copy: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        // voltar's image declares `VOLUME /var/lib/voltar` (its state dir): a tmpfs there, so the engine makes
        // no anonymous volume for a helper (removal's `v=1` would take one, this never leaves one behind).
        let state = Mount {
            target: Some(OWN_STATE_DIR.into()),
            typ: Some(MountTypeEnum::TMPFS),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec![VOLTAR_BIN.to_string()]),
            cmd: Some(args.iter().map(|a| a.to_string()).collect()),
            labels: Some([(LABEL_HELPER.to_string(), label.to_string())].into()),
            // Root whatever the image says (owners and modes are set as the backup has them), and not the
            // image's HEALTHCHECK (`voltar healthcheck` would ask for a daemon that is not there).
            user: Some("0:0".into()),
            healthcheck: Some(HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                mounts: Some(volumes.chain([state]).collect()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_named(name, image, body, &action).await
    }

    /// Start the created helper `id`, wait for it to exit (as long as it takes) and read the tail of its output.
    /// It is not removed here.
    pub async fn run_helper(&self, id: &str) -> Result<HelperExit, DockerError> {
        let action = format!("running helper container {id}");
        let not_found = || DockerError::NoSuchContainer(id.to_string());
        let docker = self.docker.clone().with_timeout(PUT_TIMEOUT);
        docker
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(|e| self.map_err(&action, e, not_found))?;
        let mut waited = docker.wait_container(id, None::<WaitContainerOptions>);
        let code = match waited.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(self.map_err(&action, e, not_found)),
            None => {
                return Err(DockerError::Api {
                    action,
                    message: "the engine did not say how it ended".into(),
                })
            }
        };
        let mut logs = self.docker.logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: LOG_TAIL.into(),
                ..Default::default()
            }),
        );
        let mut output = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(HelperExit {
            code,
            output: output.trim().to_string(),
        })
    }

    /// Make volume `to` exactly equal to volume `from`: `voltar engine-mirror` in the helper container `name`
    /// from `image` (`from` read-only at [`MIRROR_FROM`], `to` at [`MIRROR_TO`]), started, waited for. A helper
    /// of that name an earlier attempt left is removed first (it may be running: forced), so a redo can reuse the
    /// journaled name. The caller removes the container afterwards, on every path. A non-zero exit is an error
    /// with the mirror's own last line.
    pub async fn run_mirror(
        &self,
        name: &str,
        image: &str,
        label: &str,
        from: &str,
        to: &str,
    ) -> Result<(), DockerError> {
        self.remove_helper(name).await?;
        let mounts = [(from, MIRROR_FROM, true), (to, MIRROR_TO, false)];
        let id = self
            .create_voltar_helper(name, image, label, &["engine-mirror"], &mounts)
            .await?;
        let exit = self.run_helper(&id).await?;
        if exit.code == 0 {
            return Ok(());
        }
        let last = exit
            .output
            .lines()
            .last()
            .unwrap_or("no output")
            .to_string();
        Err(DockerError::Api {
            action: format!(
                "mirroring volume {from} into {to} (helper container {name}, image {image})"
            ),
            message: format!("exit code {}: {last}", exit.code),
        })
    }

    /// Check that `image` runs `voltar engine-mirror` (an older voltar, or another image, does not): `--probe`
    /// in the helper container `name`, which the caller removes. Returns the version line; every error names
    /// `[docker] mirror-image` and the fixes.
    pub async fn probe_mirror(
        &self,
        name: &str,
        image: &str,
        label: &str,
    ) -> Result<String, DockerError> {
        let ran = async {
            let id = self
                .create_voltar_helper(name, image, label, &["engine-mirror", "--probe"], &[])
                .await?;
            self.run_helper(&id).await
        }
        .await;
        let why = match ran {
            Ok(exit) => {
                let line = exit
                    .output
                    .lines()
                    .find(|l| l.starts_with(MIRROR_PROBE_LINE));
                match line {
                    Some(l) if exit.code == 0 => return Ok(l.to_string()),
                    _ => format!(
                        "exited {} ({})",
                        exit.code,
                        exit.output.lines().last().unwrap_or("no output")
                    ),
                }
            }
            Err(e) => e.to_string(),
        };
        Err(DockerError::Api {
            action: format!("checking the mirror image {image}"),
            message: format!(
                "`{VOLTAR_BIN} engine-mirror --probe` {why}: the image is not a voltar that can restore in place \
                 through the engine ([docker] mirror-image); build this version's image with scripts/image.sh and \
                 load it on the engine (`docker save {} | docker -H … load`), or restore with --to-volume NEW",
                own_image()
            ),
        })
    }

    /// Create (never start) the helper container `name` with `volume` mounted as `access` says; `label` is the
    /// value of its [`LABEL_HELPER`] label (a run's id). Returns its id.
    pub async fn create_helper(
        &self,
        name: &str,
        volume: &str,
        image: &str,
        label: &str,
        access: Access,
    ) -> Result<String, DockerError> {
        let action = format!("creating helper container {name} for volume {volume}");
        let (target, read_only) = match access {
            Access::Read => (HELPER_MOUNT, true),
            Access::Write => (PUT_AT, false),
        };
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec![NEVER_RUN.to_string()]),
            entrypoint: Some(vec![]),
            labels: Some([(LABEL_HELPER.to_string(), label.to_string())].into()),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                mounts: Some(vec![Mount {
                    target: Some(target.into()),
                    source: Some(volume.into()),
                    typ: Some(MountTypeEnum::VOLUME),
                    read_only: Some(read_only),
                    volume_options: Some(MountVolumeOptions {
                        no_copy: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_named(name, image, body, &action).await
    }

    /// The engine's tar of the helper's volume (`GET /containers/{id}/archive?path=/voltar/src`), streamed.
    pub fn helper_archive(&self, id: &str) -> ArchiveStream {
        let endpoint = self.endpoint().to_string();
        Box::pin(
            self.docker
                .download_from_container(
                    id,
                    Some(DownloadFromContainerOptions {
                        path: HELPER_MOUNT.to_string(),
                    }),
                )
                .map(move |r| {
                    r.map_err(|e| {
                        std::io::Error::other(format!(
                            "reading the archive from the Docker Engine at {endpoint}: {}",
                            super::engine::error_chain(&e)
                        ))
                    })
                }),
        )
    }

    /// Stream a tar into `path` of container `id` (`PUT /containers/{id}/archive`, no `copyUIDGID`: the owners
    /// in the tar are kept). An `Err` item in `tar` aborts the request: the engine sees a broken upload and fails
    /// it, never a clean end.
    pub async fn put_archive(
        &self,
        id: &str,
        path: &str,
        tar: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<(), DockerError> {
        let docker = self.docker.clone().with_timeout(PUT_TIMEOUT);
        let action = format!("writing into {path} of helper container {id}");
        docker
            .upload_to_container(
                id,
                Some(UploadToContainerOptionsBuilder::new().path(path).build()),
                bollard::body_try_stream(tar),
            )
            .await
            .map_err(|e| self.map_err(&action, e, || DockerError::NoSuchContainer(id.to_string())))
    }

    /// Create container `name` from `body` (whose image is `image`, never pulled: a missing one is named);
    /// returns its id.
    async fn create_named(
        &self,
        name: &str,
        image: &str,
        body: ContainerCreateBody,
        action: &str,
    ) -> Result<String, DockerError> {
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(opts), body)
            .await
            .map(|r| r.id)
            .map_err(|e| {
                self.map_err(action, e, || DockerError::Api {
                    action: action.to_string(),
                    message: format!("image {image} not found (voltar never pulls)"),
                })
            })
    }

    /// Remove the helper container `name_or_id` (forced), only when it carries [`LABEL_HELPER`]. `Ok(false)`:
    /// it was not there.
    pub async fn remove_helper(&self, name_or_id: &str) -> Result<bool, DockerError> {
        let action = format!("removing helper container {name_or_id}");
        match self
            .docker
            .inspect_container(
                name_or_id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(c) => {
                let labelled = c
                    .config
                    .and_then(|c| c.labels)
                    .is_some_and(|l| l.contains_key(LABEL_HELPER));
                if !labelled {
                    return Err(DockerError::Api {
                        action,
                        message: format!(
                            "it has no {LABEL_HELPER} label: not a voltar helper, left alone"
                        ),
                    });
                }
            }
            Err(e) if status(&e) == Some(404) => return Ok(false),
            Err(e) => {
                return Err(self.map_err(&action, e, || {
                    DockerError::NoSuchContainer(name_or_id.to_string())
                }))
            }
        }
        // `v`: with it go the anonymous volumes the image's VOLUMEs made (voltar's own declares one); never a
        // named volume.
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(name_or_id, Some(opts)).await {
            Ok(()) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.map_err(&action, e, || {
                DockerError::NoSuchContainer(name_or_id.to_string())
            })),
        }
    }
}

fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn helper_names_are_names_the_engine_accepts() {
        assert_eq!(
            super::helper_name("2026-11-30T21:25:00Z+ab", 3),
            "voltar-helper-2026-11-30T21-25-00Z-ab-3"
        );
    }
}
