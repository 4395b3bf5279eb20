//! Writing a volume through the engine (restore when the volume's host path is not writable here: a remote engine,
//! rootless Docker, Docker Desktop, or `[docker] data-path = "engine"`).
//!
//! The engine's only way in is `PUT /containers/{id}/archive`: a tar is extracted by the engine into a path of a
//! container's filesystem. So a *helper* container is created with the volume mounted read-write at [`PUT_AT`]
//! and never started (the archive API works on a created container), with no network (`NetworkMode: none`), the
//! label [`LABEL_HELPER`] and a command that does not exist, so that starting it by mistake fails at once. Its
//! image is one the engine already has (never pulled): see `restore` for the choice.
//!
//! What the engine's extraction keeps (Engine 20.10, checked by `tests/integration/engine_restore.rs`): names of
//! any length and bytes, file contents, modes with setuid/setgid/sticky, numeric owners (without `copyUIDGID`,
//! which would give everything the helper's user instead: not set here), mtimes with nanoseconds (directories'
//! too), symlinks, hardlinks, fifos and devices, `user.*` xattrs. It does not keep: the metadata of the volume's
//! root directory (the engine skips the `.` entry: the root keeps the owner, mode and mtime the new volume got)
//! and holes (a sparse file is written out in full: same content, all blocks allocated).

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountTypeEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures::Stream;

use super::{DockerError, Engine};

/// Label on every helper container voltar creates.
pub const LABEL_HELPER: &str = "voltar.helper";

/// Where a helper mounts the volume it writes.
pub const PUT_AT: &str = "/voltar-put";

/// A PUT lasts as long as its stream; the engine's ordinary call timeout would cut a large restore.
const PUT_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

impl Engine {
    /// The image `image` is present on the engine (no pull is ever made).
    pub async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.map_err(&format!("inspecting image {image}"), e, || {
                DockerError::Api {
                    action: format!("inspecting image {image}"),
                    message: "not found".into(),
                }
            })),
        }
    }

    /// Create (never start) the helper container `name` from `image` with `volume` mounted read-write at
    /// [`PUT_AT`]; returns its id.
    pub async fn create_put_helper(
        &self,
        name: &str,
        image: &str,
        volume: &str,
    ) -> Result<String, DockerError> {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            // Never started; if someone starts it, it fails at once instead of running the image's command.
            cmd: Some(vec!["/voltar-helper-is-never-started".into()]),
            entrypoint: Some(vec![]),
            labels: Some(HashMap::from([(
                LABEL_HELPER.to_string(),
                "put".to_string(),
            )])),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                mounts: Some(vec![Mount {
                    target: Some(PUT_AT.into()),
                    source: Some(volume.to_string()),
                    typ: Some(MountTypeEnum::VOLUME),
                    read_only: Some(false),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let action = format!("creating helper container {name} (image {image})");
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map(|r| r.id)
            .map_err(|e| {
                self.map_err(&action, e, || DockerError::Api {
                    action: action.clone(),
                    message: format!("image {image} is not on the engine"),
                })
            })
    }

    /// Remove a helper container (forced), with the anonymous volumes its image's `VOLUME`s made at create (a
    /// named volume, like the one it wrote, is never removed by this). One that is already gone is fine.
    pub async fn remove_helper(&self, name: &str) -> Result<(), DockerError> {
        match self
            .docker
            .remove_container(
                name,
                Some(
                    RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .v(false)
                        .build(),
                ),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => match self.map_err(&format!("removing helper container {name}"), e, || {
                DockerError::NoSuchContainer(name.to_string())
            }) {
                DockerError::NoSuchContainer(_) => Ok(()),
                other => Err(other),
            },
        }
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
}
