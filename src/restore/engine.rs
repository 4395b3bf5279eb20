//! Restore through the engine: when a volume's host path is not writable here (a remote engine, rootless Docker,
//! Docker Desktop) or `[docker] data-path = "engine"` asks for it.
//!
//! Built: `--to-volume NEW`. The new volume is journaled before it is created ([`Leftover::NewVolume`]); a helper
//! container (created, never started; `docker::helper`) mounts it read-write, journaled by name before it is created
//! ([`Leftover::Helper`]); the backup's tar is streamed into `PUT /containers/{id}/archive`:
//!
//! ```text
//! get -> sha256+size aside -> [age] -> zstd -d -> (channel) -> archive::unpack::forward -> (channel) -> PUT body
//!        (readback::read_raw, a blocking thread)                (the gate, a blocking thread)
//! ```
//!
//! The gate passes each entry on only after unpack's name rules accepted it (`..`, absolute names, names below or
//! at the archive's own symlinks, hardlinks escaping): the engine's own checks are not our safety net. The last
//! [`HOLD_BACK`] bytes of the tar (its end-of-archive marker) are held until the stored object's sha256 and size
//! and the archive's counts matched the manifest, so the engine never sees a complete archive that is not the
//! backup; otherwise the body ends in an error, the engine fails the upload, and the new volume and the helper are
//! removed. Memory is bounded by the two channels ([`CHUNKS`] × [`CHUNK`] each) and one entry's metadata headers.
//!
//! In place ([`restore_in_place`]): the same PUT fills a fresh staging volume while the users run; then, with the
//! users stopped, containers STARTED from the mirror image (`[docker] mirror-image`: voltar's own, running the
//! hidden `voltar engine-mirror`, `archive::mirror`) copy the target into a keep volume (the safety copy's source)
//! and the staging volume into the target. The crash journal says which phase it is in
//! ([`Leftover::EngineMirror`]), so `recover` either leaves the untouched target alone or finishes writing it
//! before it starts the users: no user ever runs on a half-restored volume. `--path` through the engine is
//! refused before anything is touched, naming `--to-volume` and the host path.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use bytes::Bytes;

use super::apply::ApplyCtx;
use super::*;
use crate::config::DataPath;
use crate::docker::helper::{Access, PUT_AT};
use crate::readback::RawError;

/// Bytes per message on the two channels.
const CHUNK: usize = 256 << 10;
/// Messages in flight per channel.
const CHUNKS: usize = 4;
/// The tail of the tar held back until the verdict: its end-of-archive marker (two 512-byte zero blocks).
const HOLD_BACK: usize = 1024;

/// Whether the destination volume at `path` (its host path, as the engine reports it) is written through the
/// engine under `data_path`. `host` with a path that is not writable here is an error naming the setting.
pub(super) fn through_engine(data_path: DataPath, volume: &str, path: &Path) -> Result<bool> {
    let writable = writable_here(path);
    match data_path {
        DataPath::Engine => Ok(true),
        DataPath::Auto => Ok(!writable),
        DataPath::Host if writable => Ok(false),
        DataPath::Host => bail!(
            "volume {volume}: its data at {} is not writable here (a remote or rootless engine?); set [docker] \
             data-path = \"auto\" or \"engine\" to restore through the engine",
            path.display()
        ),
    }
}

/// A directory this process can write into (by its effective ids, as the writes would be made).
fn writable_here(path: &Path) -> bool {
    use rustix::fs::{accessat, Access, AtFlags, CWD};
    !path.as_os_str().is_empty()
        && path.is_dir()
        && accessat(CWD, path, Access::WRITE_OK, AtFlags::EACCESS).is_ok()
}

/// Why a restore that needs the engine cannot have it (in place, or `--path`): the fix.
pub(super) fn not_through_engine(what: &str, volume: &str) -> anyhow::Error {
    anyhow!(
        "{what} through the engine is not supported yet (volume {volume} is not writable here, or [docker] \
         data-path = \"engine\"): nothing was stopped or changed; restore into a new volume with --to-volume NEW \
         and point the containers at it, or run voltar on the docker host with data-path = \"host\""
    )
}

/// The image a helper container is made from: `[docker] helper-image`, else the image of a container that
/// uses the backed-up volume (it is on the engine, and it is what the app already trusts), else voltar's own
/// (`voltar:<version>`, from `scripts/image.sh`). Never pulled: one that is not on the engine is an error
/// (`Engine::helper_image`, the same choice a backup through the engine makes).
async fn helper_image(ctx: &ApplyCtx<'_>, src: &SourceRecord) -> Result<String> {
    let discovery = ctx.engine.discover().await?;
    let users: Vec<String> = discovery
        .containers
        .iter()
        .filter(|c| {
            c.mounts
                .iter()
                .any(|m| m.name.as_deref() == Some(src.name.as_str()))
        })
        .map(|c| c.id.clone())
        .collect();
    Ok(ctx
        .engine
        .helper_image(ctx.config.helper_image.as_deref(), &src.name, &users)
        .await?)
}

/// Restore `src` into the new, empty volume `volume` through the engine (see the module docs). On `Err` the
/// caller removes the volume; the helper is removed here on every path (journaled until it is gone).
pub(super) async fn put_new_volume(
    ctx: &ApplyCtx<'_>,
    src: &SourceRecord,
    volume: &str,
    sr: &mut SourceRestore,
) -> Result<()> {
    let image = helper_image(ctx, src).await?;
    let name = format!("voltar-helper-{:08x}", rand::random::<u32>());
    let seq = ctx.journal.will_create(&Leftover::Helper {
        name: name.clone(),
        volume: volume.to_string(),
    })?;
    let id = quiesce::create_helper(
        ctx.engine,
        ctx.journal,
        seq,
        &name,
        volume,
        &image,
        "put",
        Access::Write,
    )
    .await?;
    ctx.progress
        .note("extracting and verifying through the engine");
    ctx.progress.expect_bytes(Some(src.stored_bytes));
    let result = put_verified(ctx, src, &id).await.map(|setid_linked| {
        if let Some(first) = setid_linked.first() {
            sr.warnings.push(format!(
                "through the engine: the set-user-ID/set-group-ID bits of {} hard-linked file(s) are not kept \
                 (the engine's extraction drops them), e.g. {first}: set them again (chmod u+s / g+s), or \
                 restore with data-path = \"host\" on the docker host",
                setid_linked.len()
            ));
        }
    });
    match quiesce::remove_helper(ctx.engine, ctx.journal, seq, &id).await {
        Ok(()) => {}
        Err(e) => sr.warnings.push(format!(
            "cannot remove helper container {name}: {e} (`voltar recover` removes it later)"
        )),
    }
    if result.is_ok() {
        sr.counts = src.counts.clone();
    }
    result
}

/// Stream the archive through the gate into the helper and judge it (module docs). Returns the set-ID files
/// with hard links, whose set-ID bits the engine did not keep (`Forwarded::setid_linked`).
async fn put_verified(ctx: &ApplyCtx<'_>, src: &SourceRecord, id: &str) -> Result<Vec<String>> {
    let object = catalog::object_key(&ctx.manifest.id, &src.object);
    let (body_tx, mut body_rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(CHUNKS);
    let body = futures::stream::poll_fn(move |cx| body_rx.poll_recv(cx));
    let upload = ctx.engine.put_archive(id, PUT_AT, body);

    let (raw_tx, raw_rx) = sync_channel::<Vec<u8>>(CHUNKS);
    let cancel = ctx.cancel.clone();
    let gate = tokio::task::spawn_blocking(move || {
        let mut out = Body {
            tx: body_tx,
            buf: Vec::with_capacity(CHUNK + HOLD_BACK),
        };
        let r = archive::unpack::forward(
            ChanReader {
                rx: raw_rx,
                cur: Vec::new(),
                pos: 0,
                cancel,
            },
            &mut out,
        );
        (r, out)
    });
    let read = async {
        let raw = readback::read_raw(
            ctx.store.clone(),
            &ctx.manifest,
            src,
            ctx.decryptor.clone(),
            Box::new(ChanWriter(raw_tx)),
            false,
            ctx.progress.clone(),
        )
        .await;
        let (gated, out) = gate.await.map_err(|e| anyhow!("internal error: {e}"))?;
        let verdict = judge(raw, gated, src, &object);
        match &verdict {
            Ok(_) => out.finish(),
            Err(e) => out.fail(e),
        }
        verdict
    };
    let (uploaded, verdict) = tokio::join!(upload, read);
    // Ctrl-C / SIGTERM stopped the gate (its input fails at once, so the upload is aborted mid-stream): the
    // caller removes what was written.
    if ctx.cancel.is_cancelled() {
        bail!("interrupted while writing through the engine: nothing was changed");
    }
    let uploaded = uploaded.with_context(|| format!("writing {object} through the engine"));
    // The archive's own problem first (an upload that failed because we aborted it says less), unless the gate
    // only stopped because the engine hung up: then the engine's answer says why.
    let (root, setid_linked) = match verdict {
        Err(e) if e.is::<EngineHungUp>() && uploaded.is_err() => return uploaded.map(|()| vec![]),
        v => v?,
    };
    uploaded?;
    // The engine skips the archive's `.` entry: the volume root's owner, mode, mtime and xattrs go in a second
    // archive of one directory entry, the mount point, which the engine merges into the existing directory.
    if let Some(root) = root {
        let name = PUT_AT.trim_start_matches('/');
        let tar = archive::unpack::dir_meta_tar(name, &root);
        let body = futures::stream::iter([Ok::<_, io::Error>(Bytes::from(tar))]);
        ctx.engine
            .put_archive(id, "/", body)
            .await
            .with_context(|| {
                format!("setting the owner, mode and mtime of volume root from {object}")
            })?;
    }
    if ctx.cancel.is_cancelled() {
        bail!("interrupted");
    }
    Ok(setid_linked)
}

/// The read and the gate judged against the manifest, as a host-path restore judges them.
fn judge(
    raw: Result<readback::RawReadBack, crate::storage::StorageError>,
    gated: Result<archive::unpack::Forwarded, archive::ArchiveError>,
    src: &SourceRecord,
    object: &str,
) -> Result<(Option<archive::unpack::DirMeta>, Vec<String>)> {
    let raw = raw.with_context(|| format!("reading {object}"))?;
    if let Some(why) = raw.unread {
        return Err(RestoreError::Read {
            object: object.to_string(),
            message: readback::not_read(&why),
        }
        .into());
    }
    let archive_err = |source| RestoreError::Archive {
        object: object.to_string(),
        source,
    };
    let forwarded = match (raw.copied, gated) {
        (Err(RawError::Open(e)), _) => return Err(e.into()),
        (Err(RawError::Read(e)), _) => {
            return Err(archive_err(archive::ArchiveError::Corrupt(e.to_string())).into())
        }
        // The engine stopped taking bytes: its answer says why (see `put_verified`).
        (_, Err(archive::ArchiveError::Sink(e))) => return Err(EngineHungUp(e).into()),
        // The gate refused an entry, or the stream broke.
        (_, Err(e)) => return Err(archive_err(e).into()),
        (Err(RawError::Write(e)), Ok(_)) => bail!("{object}: {e}"),
        (Ok(_), Ok(c)) => c,
    };
    let (sha, size) = raw
        .digest
        .expect("a successful read is hashed")
        .map_err(|e| RestoreError::Read {
            object: object.to_string(),
            message: e.to_string(),
        })?;
    if sha != src.sha256 || size != src.stored_bytes {
        return Err(RestoreError::Checksum {
            object: object.to_string(),
            expected: src.sha256.clone(),
            found: sha,
            expected_size: src.stored_bytes,
            found_size: size,
        }
        .into());
    }
    if forwarded.counts != src.counts {
        return Err(RestoreError::Counts {
            detail: count_diff(&src.counts, &forwarded.counts),
            object: object.to_string(),
        }
        .into());
    }
    Ok((forwarded.root, forwarded.setid_linked))
}

/// The gate stopped because the PUT body was no longer taken: the upload's own result has the engine's reason.
#[derive(Debug, thiserror::Error)]
#[error("the engine stopped taking the archive: {0}")]
struct EngineHungUp(io::Error);

/// The decoded stream, in [`CHUNK`]s, to the gate's thread.
struct ChanWriter(SyncSender<Vec<u8>>);

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the archive gate stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The gate's input.
struct ChanReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    /// Ctrl-C / SIGTERM: the next read fails, which ends the gate, the PUT and the read of the object.
    cancel: tokio_util::sync::CancellationToken,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other("interrupted"));
        }
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.cur = next;
                    self.pos = 0;
                }
                // The reader ended (its end, or its error, which it reports itself).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The PUT body: the gate's output in [`CHUNK`]s, the last [`HOLD_BACK`] bytes held until the verdict.
struct Body {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Body {
    fn send(&mut self, item: io::Result<Bytes>) -> io::Result<()> {
        self.tx.blocking_send(item).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped taking the archive",
            )
        })
    }

    /// All is well: the held tail, then the end of the body.
    fn finish(mut self) {
        let rest = Bytes::from(std::mem::take(&mut self.buf));
        let tx = self.tx;
        if !rest.is_empty() {
            let _ = tx.try_send(Ok(rest)).or_else(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(item) => {
                    // Called from async code: hand the last piece over without blocking the runtime.
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(item).await;
                    });
                    Ok(())
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => Err(()),
            });
        }
    }

    /// The archive is not the backup: the body ends in an error, so the engine fails the upload.
    fn fail(self, why: &anyhow::Error) {
        let tx = self.tx;
        let item = Err(io::Error::other(format!("{why:#}")));
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(item)) = tx.try_send(item) {
            tokio::spawn(async move {
                let _ = tx.send(item).await;
            });
        }
    }
}

impl Write for Body {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK + HOLD_BACK {
            let keep = self.buf.split_off(self.buf.len() - HOLD_BACK);
            let out = std::mem::replace(&mut self.buf, keep);
            self.send(Ok(Bytes::from(out)))?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Names of the volumes a restore in place through the engine makes.
const STAGING_VOLUME: &str = "voltar-staging-";
const KEEP_VOLUME: &str = "voltar-keep-";

fn fresh_name(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// A volume this restore made, with its open journal entry.
struct Made {
    name: String,
    seq: u64,
}

/// Create volume `name` (local driver, labelled `label` = `of`), journaled first as a [`Leftover::NewVolume`].
async fn make_volume(ctx: &ApplyCtx<'_>, name: &str, label: &str, of: &str) -> Result<Made> {
    let seq = ctx.journal.will_create(&Leftover::NewVolume {
        volume: name.to_string(),
    })?;
    let labels = [(label.to_string(), of.to_string())].into();
    match ctx
        .engine
        .create_volume(name, "local", &Default::default(), &labels)
        .await
    {
        Ok(_) => Ok(Made {
            name: name.to_string(),
            seq,
        }),
        Err(e) => {
            ctx.journal.removed(seq);
            Err(e).with_context(|| format!("creating volume {name}"))
        }
    }
}

/// Remove a volume this restore made and close its journal entry; a failure is a warning (the entry stays, so
/// `recover` removes it later).
async fn drop_volume(ctx: &ApplyCtx<'_>, made: Made, sr: &mut SourceRestore) {
    match ctx.engine.remove_volume(&made.name).await {
        Ok(()) | Err(crate::docker::DockerError::NoSuchVolume(_)) => ctx.journal.removed(made.seq),
        Err(e) => sr.warnings.push(format!(
            "cannot remove volume {}: {e} (`voltar recover` removes it later)",
            made.name
        )),
    }
}

/// The image the mirror containers run (`[docker] mirror-image`, else the image of voltar's own container, else
/// `voltar:<version>`), checked to be a voltar with `engine-mirror` by a probe in a throwaway container
/// (journaled as a helper). Before anything is made or stopped.
async fn mirror_image(ctx: &ApplyCtx<'_>, target: &str) -> Result<String> {
    let own = match ctx.config.mirror_image {
        Some(_) => None,
        None => {
            let discovery = ctx.engine.discover().await?;
            crate::docker::own_container(&discovery.containers).map(|c| c.image.clone())
        }
    };
    let fail = |e: &dyn std::fmt::Display| {
        anyhow!("cannot restore volume {target} in place through the engine: {e}; nothing was stopped or changed")
    };
    let image = ctx
        .engine
        .mirror_image(ctx.config.mirror_image.as_deref(), own.as_deref())
        .await
        .map_err(|e| fail(&e))?;
    let name = fresh_name(crate::docker::helper::HELPER_PREFIX);
    let seq = ctx.journal.will_create(&Leftover::Helper {
        name: name.clone(),
        volume: target.to_string(),
    })?;
    let probed = ctx.engine.probe_mirror(&name, &image, "probe").await;
    match ctx.engine.remove_helper(&name).await {
        Ok(_) => ctx.journal.removed(seq),
        Err(e) => {
            tracing::warn!(helper = %name, error = %e, "cannot remove the probe container; `voltar recover` will")
        }
    }
    probed.map(|_| image).map_err(|e| fail(&e))
}

/// Run one mirror container (`from` → `to`) named `name`, journaled as a helper before it is created and removed
/// on every path.
async fn mirror(ctx: &ApplyCtx<'_>, image: &str, name: &str, from: &str, to: &str) -> Result<()> {
    let seq = ctx.journal.will_create(&Leftover::Helper {
        name: name.to_string(),
        volume: to.to_string(),
    })?;
    let done = ctx.engine.run_mirror(name, image, "mirror", from, to).await;
    match ctx.engine.remove_helper(name).await {
        Ok(_) => ctx.journal.removed(seq),
        Err(e) => {
            tracing::warn!(helper = %name, error = %e, "cannot remove a mirror container; `voltar recover` will")
        }
    }
    Ok(done?)
}

/// Restore `src` IN PLACE into the existing volume `target` through the engine:
///
/// 1. the mirror image is found and probed (nothing made or stopped yet);
/// 2. while the users run, a staging volume is made (journaled) and filled through the verified PUT path
///    ([`put_new_volume`]);
/// 3. the safety backup's targets are checked (unless `--no-safety-backup` or the volume is empty);
/// 4. the users are stopped (`while_stopped`, restarted on every path), and in containers started from the mirror
///    image (`voltar engine-mirror`): (a) the target is copied into a keep volume (journaled `EngineMirror`
///    phase `Keeping`: a killed run leaves the target untouched), (b) the staging volume is mirrored into the target
///    (phase `Applying`, journaled only once the keep copy is whole: `recover` finishes it from the staging volume
///    before it starts the users). If (b) fails, the keep volume is mirrored back; if that fails too, the users stay
///    stopped for `recover`;
/// 5. with the users back, the keep volume is backed up as the safety copy of `target` (tag `pre-restore`);
///    committed: the keep and staging volumes are removed; not: the keep volume stays, named
///    (`Unprotected`).
pub(super) async fn restore_in_place(
    ctx: &ApplyCtx<'_>,
    src: &SourceRecord,
    target: &str,
    path: &Path,
    users: (&[PlannedContainer], &[crate::plan::PlannedService]),
    sr: &mut SourceRestore,
) -> Result<RestoreStatus> {
    use super::apply::{
        check_safety_targets, safety_backup, while_stopped, Safety, UsersStayStopped,
    };
    use crate::quiesce::MirrorPhase;

    let image = mirror_image(ctx, target).await?;
    // An empty volume needs no safety copy; one whose host path is not readable here is not known to be empty.
    let empty = std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none());
    let safety = if ctx.args.no_safety_backup || empty {
        Safety::None
    } else {
        Safety::AfterSwap
    };

    let staging = make_volume(
        ctx,
        &fresh_name(STAGING_VOLUME),
        crate::docker::helper::LABEL_STAGING_OF,
        target,
    )
    .await?;
    if let Err(e) = put_new_volume(ctx, src, &staging.name, sr).await {
        drop_volume(ctx, staging, sr).await;
        return Err(e);
    }
    if let Err(e) = check_safety_targets(ctx, safety).await {
        drop_volume(ctx, staging, sr).await;
        return Err(e);
    }

    // What the stopped phase made, for the cleanup after it.
    let mut keep: Option<Made> = None;
    let mut kept_seq: Option<u64> = None;
    let mut mirror_seq: Option<u64> = None;
    let held = while_stopped(ctx, users, sr, async |_sr: &mut SourceRestore| {
        if ctx.cancel.is_cancelled() {
            bail!("interrupted before the volume was written: nothing was changed");
        }
        let mut keep_name = None;
        if safety == Safety::AfterSwap {
            ctx.progress.note("copying the previous contents into a keep volume");
            let k = make_volume(ctx, &fresh_name(KEEP_VOLUME), crate::docker::helper::LABEL_KEEP_OF, target).await?;
            let helper = fresh_name(crate::docker::helper::HELPER_PREFIX);
            let seq = ctx.journal.will_create(&Leftover::EngineMirror {
                target: target.to_string(),
                staging: staging.name.clone(),
                keep: Some(k.name.clone()),
                image: image.clone(),
                helper: helper.clone(),
                phase: MirrorPhase::Keeping,
            })?;
            keep_name = Some(k.name.clone());
            keep = Some(k);
            mirror_seq = Some(seq);
            mirror(ctx, &image, &helper, target, &keep_name.clone().unwrap_or_default())
                .await
                .context("copying the previous contents into a keep volume; nothing was changed")?;
            if ctx.cancel.is_cancelled() {
                bail!("interrupted before the volume was written: nothing was changed");
            }
        }
        // From here the target is written: the keep volume is the only copy of what was there (never removed
        // by `recover`), and a killed run is finished by `recover` before the users start.
        let helper = fresh_name(crate::docker::helper::HELPER_PREFIX);
        if let Some(k) = &keep {
            kept_seq = Some(ctx.journal.will_create(&Leftover::KeptVolume {
                volume: k.name.clone(),
                of: target.to_string(),
            })?);
        }
        let applying = ctx.journal.will_create(&Leftover::EngineMirror {
            target: target.to_string(),
            staging: staging.name.clone(),
            keep: keep_name.clone(),
            image: image.clone(),
            helper: helper.clone(),
            phase: MirrorPhase::Applying,
        })?;
        if let Some(k) = &keep {
            ctx.journal.removed(k.seq);
        }
        if let Some(seq) = mirror_seq.replace(applying) {
            ctx.journal.removed(seq);
        }
        ctx.progress.note("writing the volume (mirror of the staging volume)");
        let applied = mirror(ctx, &image, &helper, &staging.name, target).await;
        let Err(e) = applied else {
            ctx.journal.removed(applying);
            mirror_seq = None;
            return Ok(());
        };
        // Half-written: put the previous contents back, or leave the users stopped for `recover`.
        let Some(k) = &keep_name else {
            return Err(UsersStayStopped(e.context(format!(
                "volume {target} is half-restored and there is no copy of its previous contents \
                 (--no-safety-backup); its containers were left stopped: run `voltar recover` to finish it from \
                 staging volume {}",
                staging.name
            )))
            .into());
        };
        let back = fresh_name(crate::docker::helper::HELPER_PREFIX);
        match mirror(ctx, &image, &back, k, target).await {
            Ok(()) => {
                ctx.journal.removed(applying);
                mirror_seq = None;
                Err(e.context(format!(
                    "writing volume {target} failed; its previous contents were put back from volume {k}"
                )))
            }
            Err(e2) => Err(UsersStayStopped(anyhow!(
                "writing volume {target} failed ({e:#}) and putting its previous contents back from volume {k} \
                 failed too ({e2:#}); its containers were left stopped: run `voltar recover` to finish the restore \
                 from staging volume {}",
                staging.name
            ))
            .into()),
        }
    })
    .await;

    let result = match held {
        Ok(r) => r,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {}
        Err(e) if e.is::<UsersStayStopped>() => {
            // Everything stays journaled for `recover`: the staging volume, the keep volume, the mirror entry.
            return Err(e);
        }
        Err(e) => {
            // The target holds what it held: nothing made is needed any more.
            if let Some(seq) = mirror_seq {
                ctx.journal.removed(seq);
            }
            if let Some(mut k) = keep {
                if let Some(seq) = kept_seq {
                    ctx.journal.removed(k.seq);
                    k.seq = seq;
                }
                drop_volume(ctx, k, sr).await;
            }
            drop_volume(ctx, staging, sr).await;
            return Err(e);
        }
    }
    drop_volume(ctx, staging, sr).await;
    let Some(mut k) = keep else {
        return Ok(RestoreStatus::Ok);
    };
    k.seq = kept_seq.expect("a keep volume is journaled as kept before the target is written");
    let keep_path = ctx
        .engine
        .inspect_volume(&k.name)
        .await
        .map(|v| v.mountpoint)
        .unwrap_or_default();
    match safety_backup(ctx, src, &keep_path, Some((&k.name, &image))).await {
        Ok((id, warnings)) => {
            sr.undo = Some(undo_command(&id, src, &sr.destination, &ctx.target.name));
            sr.safety_backup = Some(id);
            sr.warnings.extend(warnings);
            drop_volume(ctx, k, sr).await;
            Ok(RestoreStatus::Ok)
        }
        Err(e) => {
            // Left for the user, named in the report; the journal forgets it (as a kept staging directory).
            ctx.journal.removed(k.seq);
            Ok(RestoreStatus::Unprotected(format!(
                "{e:#}; the previous contents of volume {target} are kept in volume {} (back it up or remove it: \
                 docker volume rm {})",
                k.name, k.name
            )))
        }
    }
}
