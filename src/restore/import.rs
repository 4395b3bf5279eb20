//! `restore --archive FILE`: import a plain archive made by other tools.

use super::*;

/// `restore --archive FILE`: import a plain tar / tar.gz / tar.zst made by other tools.
pub(super) async fn import(
    config: &Config,
    args: RestoreRequest,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<RestoreOutcome> {
    let file = args.archive.clone().expect("checked by caller");
    let f = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
    // A directory this import makes is removed again if it fails (when it is still empty), as a restore does.
    let made_dir = (!args.dry_run)
        .then_some(args.to_dir.as_ref())
        .flatten()
        .filter(|d| !d.exists())
        .cloned();
    let (engine, destination, path, created) = import_destination(config, &args).await?;
    if args.dry_run {
        return Ok(RestoreOutcome::ImportPlan { file, destination });
    }
    let journal = Journal::open(&config.state_dir)?;
    let mut notes = Vec::new();
    let durable = apply::durable(
        args.no_sync,
        dir_has_entries(&path),
        &destination,
        &mut notes,
    );
    let staging = Staging::make(&path, &journal)?;
    let opts = UnpackOptions {
        strip_components: args.strip_components,
        paths: clean_paths(&args.paths)?,
        durable,
        ..UnpackOptions::default()
    };
    let result = apply::unpack_cancellable(&cancel, opts, async |opts| {
        unpack_file(f, &file, staging.path.clone(), opts, progress.clone()).await?
    })
    .await;
    let result = result.and_then(|rep| {
        exchange(&staging.path, &path)?;
        Ok(rep)
    });
    let cleanup = staging.remove(&journal);
    progress.finish();
    match result {
        Ok(rep) => {
            let report = RestoreReport {
                backup: None,
                dry_run: false,
                sources: vec![SourceRestore {
                    source: file.display().to_string(),
                    destination,
                    path,
                    create_volume: created,
                    stop: vec![],
                    stopped: vec![],
                    would_remove: None,
                    changes: None,
                    counts: rep.counts,
                    safety_backup: None,
                    undo: None,
                    restarted: vec![],
                    downtime_ms: Default::default(),
                    services: vec![],
                    warnings: rep
                        .warnings
                        .into_iter()
                        .chain(notes)
                        .chain(cleanup.err())
                        .collect(),
                    status: RestoreStatus::Ok,
                    command: None,
                    through_engine: false,
                }],
                recovered: vec![],
            };
            Ok(RestoreOutcome::Report(report))
        }
        Err(e) => {
            if let Some(d) = &made_dir {
                let _ = std::fs::remove_dir(d);
            }
            if created {
                if let (Some(e2), Destination::Volume(v)) = (&engine, &destination) {
                    let _ = e2.remove_volume(v).await;
                }
            }
            Err(e)
        }
    }
}

/// Where an import goes: `--to-volume` (created when missing; an existing one must be empty unless `--force`)
/// or `--to-dir` (likewise). Returns the engine (for a volume), the destination, the host path and whether the
/// volume was created here.
async fn import_destination(
    config: &Config,
    args: &RestoreRequest,
) -> Result<(Option<Engine>, Destination, PathBuf, bool)> {
    match (&args.to_volume, &args.to_dir) {
        (Some(v), _) => {
            let e = Engine::connect(config.docker_host.as_deref()).await?;
            let (destination, path, created) = match e.inspect_volume(v).await {
                Ok(info) => {
                    if dir_has_entries(&info.mountpoint) && !args.force {
                        bail!("volume {v} is not empty: import into a new volume, or pass --force to replace its contents (no safety backup is taken for --archive)");
                    }
                    (Destination::Volume(v.clone()), info.mountpoint, false)
                }
                // A dry run creates nothing: the volume would be new.
                Err(crate::docker::DockerError::NoSuchVolume(_)) if args.dry_run => {
                    (Destination::Volume(v.clone()), PathBuf::new(), true)
                }
                Err(crate::docker::DockerError::NoSuchVolume(_)) => {
                    let info = e
                        .create_volume(v, "local", &Default::default(), &Default::default())
                        .await?;
                    (Destination::Volume(v.clone()), info.mountpoint, true)
                }
                Err(err) => return Err(err.into()),
            };
            Ok((Some(e), destination, path, created))
        }
        (None, Some(d)) => {
            if dir_has_entries(d) && !args.force {
                bail!(
                    "{} is not empty: pass --force to replace its contents",
                    d.display()
                );
            }
            if !args.dry_run {
                std::fs::create_dir_all(d)?;
            }
            Ok((None, Destination::Dir(d.clone()), d.clone(), false))
        }
        (None, None) => bail!("--archive needs a destination: --to-volume NAME or --to-dir PATH"),
    }
}

/// Decompress `f` (tar, tar.gz or tar.zst, by its first bytes) and unpack it into `dest` on a blocking thread.
/// The outer `Err` is a failed task; the inner one names the file.
async fn unpack_file(
    f: std::fs::File,
    file: &Path,
    dest: PathBuf,
    opts: UnpackOptions,
    progress: Progress,
) -> Result<Result<UnpackReport>> {
    let name = file.display().to_string();
    Ok(
        tokio::task::spawn_blocking(move || -> Result<UnpackReport> {
            let r = ProgressReader::new(std::io::BufReader::with_capacity(1 << 20, f), progress);
            let (_fmt, dec) = archive::compress::decoder(r).map_err(|e| anyhow!("{name}: {e}"))?;
            let entries = Entries::Unpack { dest, opts };
            match readback::walk(dec, entries) {
                Ok(Walked::Unpacked(rep)) => Ok(rep),
                Ok(_) => unreachable!("unpack unpacks"),
                Err(WalkError::Entries(e)) => Err(anyhow!("{name}: {e}")),
                Err(WalkError::Trailer(e)) => Err(anyhow!("{name}: {e}")),
                Err(WalkError::Open(e)) => Err(anyhow!("{name}: {e}")),
            }
        })
        .await?,
    )
}
