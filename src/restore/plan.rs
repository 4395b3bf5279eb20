//! Restore, step 1: the plan — the backup, and per source where it goes and which containers are stopped.

use super::*;

/// What a restore will do, worked out before anything is stopped: the backup and, per source, where it goes and
/// which containers are stopped. `--dry-run` reports it ([`RestorePlan::dry_run_report`]); [`apply`] carries it
/// out.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    pub manifest: Manifest,
    pub sources: Vec<SourcePlan>,
    /// `--path` arguments, cleaned (empty: whole volumes).
    pub paths: Vec<PathBuf>,
    /// What was put right before planning (not on a dry run): leftovers of interrupted runs.
    pub recovered: Vec<String>,
}

/// One source of a [`RestorePlan`].
#[derive(Clone, Debug)]
pub struct SourcePlan {
    pub source: SourceRecord,
    pub destination: Destination,
    /// Host path whose contents are replaced (empty while the volume is still to be created).
    pub path: PathBuf,
    pub create_volume: bool,
    /// Containers that use the destination; those to stop have [`QuiesceAction::Stop`].
    pub users: Vec<PlannedContainer>,
    /// Swarm services whose running tasks use the destination: scaled to 0 for the swap and back after (their
    /// task containers are never stopped directly: swarm would replace them).
    pub services: Vec<crate::plan::PlannedService>,
}

impl SourcePlan {
    /// Names of the containers stopped (and restarted) for this source, and `service NAME` of the services
    /// scaled to 0 (and back).
    pub fn stops(&self) -> Vec<String> {
        self.users
            .iter()
            .filter(|u| u.action == QuiesceAction::Stop)
            .map(|u| u.name.clone())
            .chain(self.services.iter().map(|s| format!("service {}", s.name)))
            .collect()
    }
}

impl RestorePlan {
    /// The report of a dry run. `found[i]`: the entries at source `i`'s destination now that the backup does not
    /// hold (removed), and what would change or come back there.
    pub fn dry_run_report(
        &self,
        found: Vec<(Vec<String>, Option<DryRunChanges>)>,
    ) -> RestoreReport {
        RestoreReport {
            backup: Some(self.manifest.id.to_string()),
            dry_run: true,
            sources: self
                .sources
                .iter()
                .zip(found)
                .map(|(sp, (would_remove, changes))| SourceRestore {
                    source: sp.source.name.clone(),
                    destination: sp.destination.clone(),
                    path: sp.path.clone(),
                    create_volume: sp.create_volume,
                    stop: sp.stops(),
                    stopped: vec![],
                    would_remove: Some(would_remove),
                    undo: changes
                        .as_ref()
                        .and_then(|c| c.safety_backup_to.first())
                        .map(|t| {
                            undo_command("<safety backup id>", &sp.source, &sp.destination, t)
                        }),
                    changes,
                    counts: sp.source.counts.clone(),
                    safety_backup: None,
                    restarted: vec![],
                    downtime_ms: Default::default(),
                    services: vec![],
                    warnings: vec![],
                    status: RestoreStatus::DryRun,
                    command: None,
                    through_engine: false,
                })
                .collect(),
            recovered: self.recovered.clone(),
        }
    }
}

/// What a plan is applied with: the opened target, the keys, the engine.
pub struct Resources {
    pub(super) store: Arc<dyn Storage>,
    pub(super) target: Target,
    pub(super) decryptor: Arc<Decryptor>,
    pub(super) engine: Engine,
}

/// Resolve the backup, check the keys, pick the sources and work out destinations and the containers to stop.
/// Nothing is stopped or written; except on a dry run, leftovers of interrupted runs are recovered first (so that
/// the containers are seen as they should be).
pub async fn plan(
    config: &Config,
    args: &RestoreRequest,
    progress: &Progress,
) -> Result<(RestorePlan, Resources)> {
    let (target, store, manifest) = open_backup(args).await?;
    let decryptor = load_keys(args, &manifest)?;
    let chosen = choose_sources(args, &manifest)?;
    if chosen.len() > 1 && args.to_volume.is_some() {
        bail!("--to-volume takes one source; pick it with --source NAME");
    }
    let paths = clean_paths(&args.paths)?;
    let engine = Engine::connect(config.docker_host.as_deref()).await?;
    let mut recovered = Vec::new();
    if !args.dry_run {
        // Put back what a killed run left (stopped containers, staging directories) before looking around.
        recovered = quiesce::recover(&config.state_dir, &engine).await?.lines();
        for line in &recovered {
            progress.warn(&format!("recovered from an interrupted run: {line}"));
        }
    }

    // Work out destinations and the containers to stop.
    let mut discovery = engine.discover().await?;
    // A container another voltar run holds (paused for its backup) is running for its user: stop it like one,
    // after that run lets go of it.
    quiesce::see_through_other_runs(&config.state_dir, &mut discovery.containers);
    let mut plans = Vec::new();
    for src in &chosen {
        let (destination, path, create_volume) =
            destination(args, &engine, src, chosen.len() > 1).await?;
        let (users, services) = users_of(config, args, &discovery, &destination)?;
        if let Destination::Dir(d) = &destination {
            if args.to_dir.is_some() && !args.force && dir_has_entries(d) && paths.is_empty() {
                bail!(
                    "{} is not empty: its contents would be replaced; pass --force to allow it",
                    d.display()
                );
            }
        }
        plans.push(SourcePlan {
            source: src.clone(),
            destination,
            path,
            create_volume,
            users,
            services,
        });
    }
    let plan = RestorePlan {
        manifest,
        sources: plans,
        paths,
        recovered,
    };
    let resources = Resources {
        store,
        target,
        decryptor,
        engine,
    };
    Ok((plan, resources))
}

/// Open the target and resolve the backup the request names (an id, `latest`, `--before`). With `latest` and no
/// `--source`, warn about the sources of the job that a partial run left out of it.
pub(super) async fn open_backup(
    args: &RestoreRequest,
) -> Result<(Target, Arc<dyn Storage>, Manifest)> {
    let (Some(target), Some(spec)) = (args.target.clone(), args.backup.clone()) else {
        bail!("which backup? give a backup id or `latest` (see `voltar list`), or --archive FILE");
    };
    let store = crate::storage::open(&target)
        .await
        .with_context(|| format!("opening target {}", target.name))?;
    let listing = catalog::list(store.as_ref()).await?;
    let manifest = catalog::resolve(&listing, &spec, args.before, &args.sources)?.clone();
    if spec == "latest" && args.sources.is_empty() {
        // A partial run (`backup --only`) makes a `latest` that lacks some sources: say where they are.
        for (name, id) in newer_elsewhere(&listing, &manifest) {
            tracing::warn!(
                "backup {} does not hold {name}; its newest backup is {id} (restore it with --source {name})",
                manifest.id
            );
        }
    }
    Ok((target, store, manifest))
}

/// The keys given; an encrypted backup needs one, and its manifest's seal must check out.
pub(super) fn load_keys(args: &RestoreRequest, manifest: &Manifest) -> Result<Arc<Decryptor>> {
    let decryptor = Arc::new(Decryptor::load(
        &args.identities,
        args.passphrase_file.as_deref(),
    )?);
    if manifest.encryption.is_some() {
        if decryptor.is_empty() {
            return Err(crate::crypto::CryptoError::NeedKey {
                what: manifest.id.to_string(),
            }
            .into());
        }
        decryptor.check_seal(manifest)?;
    }
    Ok(decryptor)
}

/// The sources to restore: `--source` names (each must be in the backup), else all of them.
pub(super) fn choose_sources(
    args: &RestoreRequest,
    manifest: &Manifest,
) -> Result<Vec<SourceRecord>> {
    if args.sources.is_empty() {
        // A dump goes into a running database (`--to-container`) or a file (`--to-file`), never into a volume
        // or directory: restoring "everything" leaves dumps out and says how to restore them.
        let (dumps, rest): (Vec<_>, Vec<_>) = manifest
            .sources
            .iter()
            .cloned()
            .partition(|s| s.kind == SourceKind::Dump);
        for d in &dumps {
            tracing::warn!(
                "{} is a database dump, not restored with the volumes: restore it with --source {} \
                 --to-container NAME (or --to-file PATH)",
                d.name,
                d.name
            );
        }
        if rest.is_empty() && !dumps.is_empty() {
            bail!(
                "backup {} holds only database dumps: restore one with --source NAME --to-container CONTAINER \
                 (or --to-file PATH)",
                manifest.id
            );
        }
        return Ok(rest);
    }
    args.sources
        .iter()
        .map(|n| {
            manifest.source(n).cloned().ok_or_else(|| {
                let failed = manifest.failed.iter().find(|f| &f.name == n);
                match failed {
                    Some(f) => {
                        anyhow!("source `{n}` failed in backup {}: {}", manifest.id, f.error)
                    }
                    None => anyhow!(
                        "backup {} has no source `{n}` (it has: {})",
                        manifest.id,
                        manifest
                            .sources
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            })
        })
        .collect()
}

/// Where `src` goes: the destination, the host path replaced (empty while a volume is still to be created) and
/// whether the volume is created. `many`: more than one source is restored (each gets its own `--to-dir`
/// subdirectory).
async fn destination(
    args: &RestoreRequest,
    engine: &Engine,
    src: &SourceRecord,
    many: bool,
) -> Result<(Destination, PathBuf, bool)> {
    if src.kind == SourceKind::Dump {
        bail!(
            "{} is a database dump: restore it into a running database with --to-container NAME, or write it out \
             with --to-file PATH",
            src.name
        );
    }
    Ok(match (&args.to_volume, &args.to_dir) {
        (Some(v), _) => match engine.inspect_volume(v).await {
            // An existing volume is taken as it is when empty (made with `docker volume create` for this, say);
            // one with contents only with --force, as --to-dir has it.
            Ok(info) => {
                if !args.force && args.paths.is_empty() {
                    match std::fs::read_dir(&info.mountpoint).map(|mut d| d.next().is_none()) {
                        Ok(true) => {}
                        Ok(false) => bail!(
                            "volume {v} is not empty: its contents would be replaced; pass --force to allow it, or pick a new name for --to-volume"
                        ),
                        Err(e) => bail!(
                            "cannot see whether volume {v} is empty ({}: {e}); pass --force to restore into it anyway",
                            info.mountpoint.display()
                        ),
                    }
                }
                (Destination::Volume(v.clone()), info.mountpoint, false)
            }
            Err(crate::docker::DockerError::NoSuchVolume(_)) => {
                (Destination::Volume(v.clone()), PathBuf::new(), true)
            }
            Err(e) => return Err(e.into()),
        },
        (None, Some(d)) => {
            let p = if many { d.join(&src.name) } else { d.clone() };
            (Destination::Dir(p.clone()), p, false)
        }
        (None, None) => match src.kind {
            SourceKind::Volume => match engine.inspect_volume(&src.name).await {
                Ok(v) => (Destination::Volume(src.name.clone()), v.mountpoint, false),
                Err(crate::docker::DockerError::NoSuchVolume(_)) => {
                    (Destination::Volume(src.name.clone()), PathBuf::new(), true)
                }
                Err(e) => return Err(e.into()),
            },
            SourceKind::Bind => (
                Destination::Dir(PathBuf::from(&src.path)),
                PathBuf::from(&src.path),
                false,
            ),
            SourceKind::Dump => unreachable!("refused above"),
        },
    })
}

/// The containers that use `destination`: the running ones are stopped, except Swarm tasks, whose replicated
/// service is scaled to 0 instead (once per service). A task of a service that cannot be scaled (global, a job,
/// or not readable from here) or a paused container using it stops the plan (the fix is the user's).
fn users_of(
    config: &Config,
    args: &RestoreRequest,
    discovery: &crate::docker::Discovery,
    destination: &Destination,
) -> Result<(Vec<PlannedContainer>, Vec<crate::plan::PlannedService>)> {
    let mut users: Vec<PlannedContainer> = Vec::new();
    let mut services: Vec<crate::plan::PlannedService> = Vec::new();
    for c in &discovery.containers {
        let uses = c.mounts.iter().any(|m| match destination {
            Destination::Volume(v) => m.name.as_deref() == Some(v.as_str()),
            Destination::Dir(d) => {
                !d.as_os_str().is_empty() && (m.source == *d || m.source.starts_with(d))
            }
            Destination::Container(_) | Destination::File(_) => false,
        });
        if !uses {
            continue;
        }
        let service = c
            .swarm_service_id()
            .and_then(|id| discovery.services.iter().find(|s| s.id == id));
        if let Some(svc_name) = c.swarm_service().or(c.swarm_service_id()) {
            let running = matches!(
                c.state,
                ContainerState::Running | ContainerState::Restarting | ContainerState::Paused
            );
            if !running {
                users.push(planned_user(config, args, c));
                continue;
            }
            let Some(svc) =
                service.filter(|s| matches!(s.mode, crate::docker::ServiceMode::Replicated { .. }))
            else {
                bail!(
                    "{destination} is used by swarm service {svc_name} (task {}), which voltar cannot scale to 0 here (a global service, a job, or not a manager node): remove the service or its mount first, restore, then deploy it again",
                    c.name
                );
            };
            let mut planned = planned_user(config, args, c);
            planned.action = QuiesceAction::None;
            planned.reason = format!(
                "swarm task: its service {} is scaled to 0 instead",
                svc.name
            );
            match services.iter_mut().find(|p| p.id == svc.id) {
                Some(p) => p.tasks.push(c.name.clone()),
                None => services.push(crate::plan::PlannedService::of(
                    svc,
                    vec![c.name.clone()],
                    planned.stop_timeout,
                    "uses the restore target",
                )),
            }
            users.push(planned);
            continue;
        }
        if c.state == ContainerState::Paused {
            bail!(
                "container {} uses {destination} and is paused: unpause or stop it first",
                c.name
            );
        }
        users.push(planned_user(config, args, c));
    }
    Ok((users, services))
}

/// A container using the destination: stopped when it is running, left alone otherwise.
fn planned_user(config: &Config, args: &RestoreRequest, c: &ContainerInfo) -> PlannedContainer {
    let running = matches!(
        c.state,
        ContainerState::Running | ContainerState::Restarting
    );
    // As backup does: the container's own label first, then the job's setting.
    let default = config
        .job(args.job.as_deref())
        .map(|j| j.quiesce.stop_timeout)
        .unwrap_or(crate::config::Quiesce::default().stop_timeout);
    let (action, reason) = if running {
        (QuiesceAction::Stop, "uses the restore target")
    } else {
        (QuiesceAction::None, "not running")
    };
    PlannedContainer::new(
        c,
        true,
        action,
        crate::plan::stop_timeout(c, default),
        reason.into(),
    )
}

/// `--dry-run`: the plan, with what each destination holds now that the backup does not (with `--path`: below
/// those paths, which the restore swaps whole), what differs from the backup and what is missing.
pub(super) async fn dry_run(
    plan: &RestorePlan,
    res: &Resources,
    safety_to: Option<Vec<String>>,
) -> Result<RestoreReport> {
    let mut found = Vec::new();
    for sp in &plan.sources {
        let archive = list_archive(
            res.store.clone(),
            &plan.manifest,
            &sp.source,
            res.decryptor.clone(),
            &plan.paths,
        )
        .await?;
        if sp.path.as_os_str().is_empty() {
            // A volume still to be created: nothing there to remove, change or keep a copy of.
            found.push((vec![], None));
            continue;
        }
        let now = if plan.paths.is_empty() {
            current_names(&sp.path)
        } else {
            plan.paths
                .iter()
                .flat_map(|p| names_below(&sp.path, p))
                .collect()
        };
        let would_remove = now
            .iter()
            .filter(|p| !archive.contains_key(*p))
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let mut changes = compare(&sp.path, &archive);
        if dir_has_entries(&sp.path) {
            changes.safety_backup_to = safety_to.clone().unwrap_or_default();
        }
        found.push((would_remove, Some(changes)));
    }
    Ok(plan.dry_run_report(found))
}

/// Each entry of the backup against what is at `root` now: missing (it comes back) or different (type; a
/// file's size; mode; mtime, except of directories, whose mtime follows their contents; a symlink's target).
/// A hard link is compared by its presence only. Nothing below a symlink is looked at (the restore does not go
/// through one either).
fn compare(
    root: &Path,
    archive: &BTreeMap<PathBuf, Option<archive::unpack::ListedEntry>>,
) -> DryRunChanges {
    let mut c = DryRunChanges::default();
    for (p, was) in archive {
        let Some(was) = was else { continue };
        let name = || p.to_string_lossy().into_owned();
        match present(root, p) {
            None => {
                c.would_come_back_count += 1;
                if c.would_come_back.len() < DRY_RUN_LISTED {
                    c.would_come_back.push(name());
                }
            }
            Some(now) => {
                let differs = differences(&now, was, || std::fs::read_link(root.join(p)).ok());
                if !differs.is_empty() {
                    c.would_change_count += 1;
                    if c.would_change.len() < DRY_RUN_LISTED {
                        c.would_change.push(Changed {
                            path: name(),
                            differs,
                        });
                    }
                }
            }
        }
    }
    c
}

/// The metadata of `root/p` (not following a symlink at `p`), when every directory on the way is a directory
/// and not a symlink.
fn present(root: &Path, p: &Path) -> Option<std::fs::Metadata> {
    let mut at = root.to_path_buf();
    let mut comps = p.components().peekable();
    while let Some(c) = comps.next() {
        at.push(c);
        let m = std::fs::symlink_metadata(&at).ok()?;
        if comps.peek().is_none() {
            return Some(m);
        }
        if !m.is_dir() {
            return None;
        }
    }
    None
}

/// How an entry there now differs from the backup's.
fn differences(
    now: &std::fs::Metadata,
    was: &archive::unpack::ListedEntry,
    link_now: impl FnOnce() -> Option<PathBuf>,
) -> Vec<&'static str> {
    use archive::unpack::ListedKind as K;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let t = now.file_type();
    let kind = if t.is_symlink() {
        K::Symlink
    } else if t.is_dir() {
        K::Dir
    } else if t.is_fifo() {
        K::Fifo
    } else if t.is_char_device() {
        K::Char
    } else if t.is_block_device() {
        K::Block
    } else {
        K::File
    };
    match was.kind {
        K::Hardlink => return vec![],
        k if k != kind => return vec!["type"],
        _ => {}
    }
    let mut d = Vec::new();
    if kind == K::File && now.len() != was.size {
        d.push("size");
    }
    if kind != K::Symlink && now.mode() & 0o7777 != was.mode {
        d.push("mode");
    }
    if kind != K::Dir && (now.mtime(), now.mtime_nsec() as u32) != was.mtime {
        d.push("mtime");
    }
    if kind == K::Symlink && link_now() != was.link {
        d.push("link target");
    }
    d
}

/// The command that restores `src` from the safety backup `id` into `destination` again: undoes a restore.
pub(super) fn undo_command(
    id: &str,
    src: &SourceRecord,
    destination: &Destination,
    target: &str,
) -> String {
    let mut cmd = format!(
        "voltar restore {id} --source {} -t {}",
        shell_word(&src.name),
        shell_word(target)
    );
    let own = match (src.kind, destination) {
        (SourceKind::Volume, Destination::Volume(v)) => *v == src.name,
        (SourceKind::Bind, Destination::Dir(d)) => d.as_os_str() == src.path.as_str(),
        _ => false,
    };
    if !own {
        match destination {
            Destination::Volume(v) => {
                cmd.push_str(&format!(" --to-volume {} --force", shell_word(v)))
            }
            Destination::Dir(d) => cmd.push_str(&format!(
                " --to-dir {} --force",
                shell_word(&d.to_string_lossy())
            )),
            Destination::Container(c) => {
                cmd.push_str(&format!(" --to-container {}", shell_word(c)))
            }
            Destination::File(f) => cmd.push_str(&format!(
                " --to-file {} --force",
                shell_word(&f.to_string_lossy())
            )),
        }
    }
    cmd
}

/// `s` as one shell word: as it is when that is safe, else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The entries below `root/p` now, relative to `root`; none when `p` or a parent of it is not a directory (a
/// symlink included: the swap refuses to go through one, and replaces a symlink at `p` itself, not what it
/// points to).
fn names_below(root: &Path, p: &Path) -> BTreeSet<PathBuf> {
    let mut at = root.to_path_buf();
    for c in p.components() {
        at.push(c);
        if !std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir()) {
            return BTreeSet::new();
        }
    }
    current_names(&at).into_iter().map(|n| p.join(n)).collect()
}

/// Names in an archive (for `--dry-run`), read back and checked like a restore reads it.
async fn list_archive(
    store: Arc<dyn Storage>,
    manifest: &Manifest,
    src: &SourceRecord,
    decryptor: Arc<Decryptor>,
    paths: &[PathBuf],
) -> Result<BTreeMap<PathBuf, Option<archive::unpack::ListedEntry>>> {
    let rb = readback::read(
        store,
        manifest,
        src,
        decryptor,
        Entries::List(UnpackOptions {
            paths: paths.to_vec(),
            ..UnpackOptions::default()
        }),
        false,
        Progress::hidden(),
    )
    .await?;
    let Walked::Listed(names) = checked(rb, src, false)? else {
        unreachable!("list lists")
    };
    Ok(names)
}
