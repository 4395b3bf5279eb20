//! Plan: pure. Discovery + job config → which sources to back up, which containers to quiesce for each and how.
//! `voltar plan` prints it; `backup --dry-run` stops after it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::catalog::SourceKind;
use crate::config::{Job, QuiesceAction};
use crate::docker::{ContainerInfo, ContainerState, Discovery, MountInfo, MountKind, VolumeInfo};
use crate::dump::{self, DumpSpec};
use crate::hooks::{self, ContainerHooks};

/// A container to act on while one source is read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlannedContainer {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
    /// State at discovery time.
    pub state: String,
    pub rw: bool,
    /// What voltar will do while the source is read (`none` unless running and mounted read-write).
    pub action: QuiesceAction,
    #[serde(with = "secs")]
    pub stop_timeout: Duration,
    /// Why this action.
    pub reason: String,
    /// Commands run in this container before / after the source is read (labels or config; see `hooks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<ContainerHooks>,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

/// A source selected for backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlannedSource {
    /// Source name: the volume name, or `bind-<path>` for a bind mount. Also the archive's file name stem.
    pub name: String,
    pub kind: SourceKind,
    /// Host path to read.
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Every container that mounts the source, with what voltar will do to it.
    pub containers: Vec<PlannedContainer>,
    /// Why it was selected.
    pub reason: String,
    /// A `dump` source: the command run in its container (see `dump`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpSpec>,
}

impl PlannedSource {
    /// Containers that will actually be paused or stopped.
    pub fn holds(&self) -> impl Iterator<Item = &PlannedContainer> {
        self.containers
            .iter()
            .filter(|c| c.action != QuiesceAction::None)
    }
}

/// A candidate that will not be backed up, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SkippedSource {
    pub name: String,
    pub kind: SourceKind,
    pub path: PathBuf,
    pub reason: String,
    /// The containers that mount it (what names an anonymous volume to a human).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Plan {
    pub sources: Vec<PlannedSource>,
    pub skipped: Vec<SkippedSource>,
    /// voltar runs in this container: its own mounts were left out ([`leave_out_own`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_in: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("unknown source `{name}` (known: {known}; see `voltar plan`)")]
    UnknownSource { name: String, known: String },
    #[error("source `{name}` is not selected for backup: {reason}")]
    NotSelected { name: String, reason: String },
    #[error("bad selection pattern `{0}`")]
    Pattern(String),
}

/// What a host path is, as far as planning bind mounts needs to know. Supplied by the caller so `plan` stays
/// pure (tests pass a closure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    Dir,
    File,
    /// Socket, device, FIFO: never backed up.
    Special,
    Missing,
}

/// Container labels voltar reads.
pub const LABEL_BACKUP: &str = "voltar.backup";
pub const LABEL_QUIESCE: &str = "voltar.quiesce";
pub const LABEL_STOP_TIMEOUT: &str = "voltar.stop-timeout";

/// Host paths never backed up as bind mounts, whatever the config says.
const FORBIDDEN_BIND_ROOTS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/run/docker.sock",
    "/var/run/docker.sock",
];

/// Build the plan. `only` restricts to named sources (an unknown name is an error); `probe` says what a bind
/// mount's host path is.
pub fn plan(
    discovery: &Discovery,
    job: &Job,
    only: &[String],
    probe: &dyn Fn(&Path) -> PathKind,
) -> Result<Plan, PlanError> {
    let mut plan = Plan::default();
    plan_volumes(discovery, job, &mut plan)?;
    plan_binds(discovery, job, probe, &mut plan)?;
    plan_dumps(discovery, &mut plan);
    if !only.is_empty() {
        check_only(&plan, only)?;
        promote_named(discovery, job, only, &mut plan);
        keep_only_named(only, &mut plan);
    }
    plan.sources.sort_by(|a, b| a.name.cmp(&b.name));
    plan.skipped.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(plan)
}

/// Every named volume: selected (with the containers that use it) or skipped, with the reason.
fn plan_volumes(discovery: &Discovery, job: &Job, plan: &mut Plan) -> Result<(), PlanError> {
    let include = globs(&job.selection.include)?;
    let exclude = globs(&job.selection.exclude)?;
    for v in &discovery.volumes {
        let users: Vec<(&ContainerInfo, bool)> = users_of(discovery, |m| {
            m.kind == MountKind::Volume && m.name.as_deref() == Some(v.name.as_str())
        });
        match select_volume(v, &users, &include, &exclude) {
            Ok(reason) => plan.sources.push(PlannedSource {
                name: v.name.clone(),
                kind: SourceKind::Volume,
                path: v.mountpoint.clone(),
                driver: Some(v.driver.clone()),
                driver_opts: v.options.clone(),
                labels: v.labels.clone(),
                containers: plan_containers(&users, job),
                reason,
                dump: None,
            }),
            Err(reason) => plan.skipped.push(SkippedSource {
                name: v.name.clone(),
                kind: SourceKind::Volume,
                path: v.mountpoint.clone(),
                reason,
                used_by: names_of(&users),
            }),
        }
    }
    Ok(())
}

/// Every bind mount, one source per host path however many containers mount it.
fn plan_binds(
    discovery: &Discovery,
    job: &Job,
    probe: &dyn Fn(&Path) -> PathKind,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    let include_binds = globs(&job.selection.include_binds)?;
    let exclude_binds = globs(&job.selection.exclude_binds)?;
    let mut bind_paths: BTreeMap<PathBuf, ()> = BTreeMap::new();
    for c in &discovery.containers {
        for m in &c.mounts {
            if m.kind == MountKind::Bind {
                bind_paths.insert(m.source.clone(), ());
            }
        }
    }
    let mut used_names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in bind_paths.keys() {
        let users = users_of(discovery, |m| {
            m.kind == MountKind::Bind && m.source == *path
        });
        let name = bind_name(path, &mut used_names);
        match select_bind(path, &users, job, &include_binds, &exclude_binds, probe) {
            Ok(reason) => plan.sources.push(PlannedSource {
                name,
                kind: SourceKind::Bind,
                path: path.clone(),
                driver: None,
                driver_opts: BTreeMap::new(),
                labels: BTreeMap::new(),
                containers: plan_containers(&users, job),
                reason,
                dump: None,
            }),
            Err(reason) => plan.skipped.push(SkippedSource {
                name,
                kind: SourceKind::Bind,
                path: path.clone(),
                reason,
                used_by: names_of(&users),
            }),
        }
    }
    Ok(())
}

/// Every `--only` name must be a source: selected, or skipped by a default that naming it overrides (not by a
/// hard rule).
fn check_only(plan: &Plan, only: &[String]) -> Result<(), PlanError> {
    for name in only {
        if plan.sources.iter().any(|s| &s.name == name) {
            continue;
        }
        if let Some(s) = plan.skipped.iter().find(|s| &s.name == name) {
            // Naming a source explicitly overrides the selection defaults, but not the hard rules.
            if s.reason.starts_with(HARD_RULE) {
                return Err(PlanError::NotSelected {
                    name: name.clone(),
                    reason: s.reason.clone(),
                });
            }
            continue;
        }
        let mut known: Vec<&str> = plan
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .chain(plan.skipped.iter().map(|s| s.name.as_str()))
            .collect();
        known.sort();
        return Err(PlanError::UnknownSource {
            name: name.clone(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    }
    Ok(())
}

/// Skipped sources named with `--only` become sources, their reason saying so.
fn promote_named(discovery: &Discovery, job: &Job, only: &[String], plan: &mut Plan) {
    let mut promoted = Vec::new();
    plan.skipped.retain(|s| {
        if only.contains(&s.name) {
            promoted.push(s.clone());
            false
        } else {
            true
        }
    });
    for s in promoted {
        if s.kind == SourceKind::Dump {
            // A dump skipped because its container does not run cannot be made to run by naming it.
            plan.skipped.push(s);
            continue;
        }
        let users = match s.kind {
            SourceKind::Volume => users_of(discovery, |m| {
                m.kind == MountKind::Volume && m.name.as_deref() == Some(s.name.as_str())
            }),
            SourceKind::Bind | SourceKind::Dump => users_of(discovery, |m| {
                m.kind == MountKind::Bind && m.source == s.path
            }),
        };
        let vol = discovery.volumes.iter().find(|v| v.name == s.name);
        plan.sources.push(PlannedSource {
            name: s.name.clone(),
            kind: s.kind,
            path: s.path.clone(),
            driver: vol.map(|v| v.driver.clone()),
            driver_opts: vol.map(|v| v.options.clone()).unwrap_or_default(),
            labels: vol.map(|v| v.labels.clone()).unwrap_or_default(),
            containers: plan_containers(&users, job),
            reason: format!("named with --only (was: {})", s.reason),
            dump: None,
        });
    }
}

/// Sources not named with `--only` are skipped.
fn keep_only_named(only: &[String], plan: &mut Plan) {
    let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.sources)
        .into_iter()
        .partition(|s| only.contains(&s.name));
    plan.sources = keep;
    plan.skipped.extend(drop.into_iter().map(|s| SkippedSource {
        used_by: s.containers.iter().map(|c| c.name.clone()).collect(),
        name: s.name,
        kind: s.kind,
        path: s.path,
        reason: "not named with --only".into(),
    }));
}

/// Every container with a dump label: its dump is a source of its own (`dump@<container>`) when the container
/// runs, else skipped with the reason (its volumes are then archived as usual). With `voltar.dump-only=true` the
/// volumes and bind mounts that container mounts are skipped: the dump is their backup.
fn plan_dumps(discovery: &Discovery, plan: &mut Plan) {
    for c in &discovery.containers {
        let Some(spec) = dump::resolve(c) else {
            continue;
        };
        let name = dump::source_name(&c.name);
        if let Err(reason) = dump::runnable(c) {
            plan.skipped.push(SkippedSource {
                name,
                kind: SourceKind::Dump,
                path: PathBuf::new(),
                reason,
                used_by: vec![c.name.clone()],
            });
            continue;
        }
        if spec.only && spec.problem.is_none() {
            let why = format!(
                "container {} has {}=true: its dump {name} is backed up instead",
                c.name,
                dump::LABEL_DUMP_ONLY
            );
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.sources)
                .into_iter()
                .partition(|s| s.containers.iter().any(|u| u.id == c.id));
            plan.sources = rest;
            plan.skipped.extend(mine.into_iter().map(|s| SkippedSource {
                used_by: s.containers.iter().map(|u| u.name.clone()).collect(),
                name: s.name,
                kind: s.kind,
                path: s.path,
                reason: why.clone(),
            }));
        }
        let runs = PlannedContainer::new(
            c,
            false,
            QuiesceAction::None,
            Duration::ZERO,
            format!("runs the dump, not paused or stopped; {}", spec.from),
        );
        plan.sources.push(PlannedSource {
            name,
            kind: SourceKind::Dump,
            path: PathBuf::new(),
            driver: None,
            driver_opts: BTreeMap::new(),
            labels: BTreeMap::new(),
            containers: vec![runs],
            reason: spec.from.clone(),
            dump: Some(spec),
        });
    }
}

/// Whether container `c`'s dump will run: then the dump is its consistent copy and its volumes are read
/// without pausing or stopping it (unless its `voltar.quiesce` label asks for that).
fn dumped(c: &ContainerInfo) -> Option<String> {
    let spec = dump::resolve(c)?;
    (spec.problem.is_none() && dump::runnable(c).is_ok()).then(|| {
        format!(
            "not quiesced: its dump {} is the consistent copy ({}; set voltar.quiesce to quiesce it anyway)",
            dump::source_name(&c.name),
            spec.from
        )
    })
}

/// Prefix of skip reasons that `--only` cannot override.
const HARD_RULE: &str = "never backed up: ";

fn globs(patterns: &[String]) -> Result<GlobSet, PlanError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|_| PlanError::Pattern(p.clone()))?);
    }
    b.build().map_err(|e| PlanError::Pattern(e.to_string()))
}

/// voltar runs in container `own`: leave its own mounts out of the plan — its bind mounts (docker.sock, the
/// volumes directory, the config, the state dir) and its volumes, whether selected or skipped — and never hold
/// it for another source.
pub fn leave_out_own(plan: &mut Plan, own: &ContainerInfo) {
    let mine = |kind: SourceKind, name: &str, path: &Path| {
        own.mounts.iter().any(|m| match kind {
            SourceKind::Volume => m.kind == MountKind::Volume && m.name.as_deref() == Some(name),
            SourceKind::Bind => m.kind == MountKind::Bind && m.source == path,
            SourceKind::Dump => false,
        })
    };
    plan.sources.retain(|s| !mine(s.kind, &s.name, &s.path));
    plan.skipped.retain(|s| !mine(s.kind, &s.name, &s.path));
    for s in &mut plan.sources {
        s.containers.retain(|c| c.id != own.id);
    }
    plan.running_in = Some(own.name.clone());
}

fn names_of(users: &[(&ContainerInfo, bool)]) -> Vec<String> {
    users.iter().map(|(c, _)| c.name.clone()).collect()
}

/// Containers mounting something, each with whether any of its matching mounts is read-write.
fn users_of(d: &Discovery, matches: impl Fn(&MountInfo) -> bool) -> Vec<(&ContainerInfo, bool)> {
    let mut v: Vec<(&ContainerInfo, bool)> = d
        .containers
        .iter()
        .filter_map(|c| {
            let ms: Vec<&MountInfo> = c.mounts.iter().filter(|m| matches(m)).collect();
            (!ms.is_empty()).then(|| (c, ms.iter().any(|m| m.rw)))
        })
        .collect();
    v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    v
}

fn label_bool(labels: &BTreeMap<String, String>, key: &str) -> Option<bool> {
    labels.get(key).map(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on"
        )
    })
}

/// Anonymous volumes are named by 64 hex digits.
pub fn is_anonymous(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn select_volume(
    v: &VolumeInfo,
    users: &[(&ContainerInfo, bool)],
    include: &GlobSet,
    exclude: &GlobSet,
) -> Result<String, String> {
    match label_bool(&v.labels, LABEL_BACKUP) {
        Some(true) => return Ok("volume label voltar.backup=true".into()),
        Some(false) => return Err("volume label voltar.backup=false".into()),
        None => {}
    }
    let opted_out: Vec<&str> = users
        .iter()
        .filter(|(c, _)| label_bool(&c.labels, LABEL_BACKUP) == Some(false))
        .map(|(c, _)| c.name.as_str())
        .collect();
    let opted_in = users
        .iter()
        .any(|(c, _)| label_bool(&c.labels, LABEL_BACKUP) == Some(true));
    if !opted_out.is_empty() && !opted_in {
        return Err(format!(
            "container label voltar.backup=false on {}",
            opted_out.join(", ")
        ));
    }
    if opted_in {
        return Ok("container label voltar.backup=true".into());
    }
    if is_anonymous(&v.name) {
        return Err("anonymous volume (label it voltar.backup=true to include it)".into());
    }
    if exclude.is_match(&v.name) {
        return Err("excluded by selection.exclude".into());
    }
    if !include.is_match(&v.name) {
        return Err("not matched by selection.include".into());
    }
    Ok("selected by selection.include".into())
}

fn select_bind(
    path: &Path,
    users: &[(&ContainerInfo, bool)],
    job: &Job,
    include: &GlobSet,
    exclude: &GlobSet,
    probe: &dyn Fn(&Path) -> PathKind,
) -> Result<String, String> {
    if path == Path::new("/") {
        return Err(format!("{HARD_RULE}the host root `/`"));
    }
    if FORBIDDEN_BIND_ROOTS.iter().any(|r| path.starts_with(r)) {
        return Err(format!("{HARD_RULE}system path {}", path.display()));
    }
    match probe(path) {
        PathKind::Dir => {}
        PathKind::File => {
            return Err(
                "a single file, not a directory (bind mounts of files are not backed up)".into(),
            )
        }
        PathKind::Special => return Err(format!("{HARD_RULE}a socket, device or FIFO")),
        PathKind::Missing => return Err("host path does not exist or is not readable".into()),
    }
    if exclude.is_match(path) {
        return Err("excluded by selection.exclude-binds".into());
    }
    let opted_out = users
        .iter()
        .all(|(c, _)| label_bool(&c.labels, LABEL_BACKUP) == Some(false));
    if opted_out && !users.is_empty() {
        return Err("container label voltar.backup=false".into());
    }
    if users
        .iter()
        .any(|(c, _)| label_bool(&c.labels, LABEL_BACKUP) == Some(true))
    {
        return Ok("container label voltar.backup=true".into());
    }
    if include.is_match(path) {
        return Ok("selected by selection.include-binds".into());
    }
    if job.selection.bind_mounts {
        return Ok("selection.bind-mounts = true".into());
    }
    Err(
        "bind mount not opted in (container label voltar.backup=true, or selection.include-binds)"
            .into(),
    )
}

/// `bind-` + the path with separators turned into `-`, made unique.
fn bind_name(path: &Path, used: &mut BTreeMap<String, PathBuf>) -> String {
    let raw = path.to_string_lossy();
    let mut s: String = raw
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(100);
    let mut name = format!("bind-{s}");
    if used.get(&name).is_some_and(|p| p != path) {
        use sha2::Digest;
        let h = sha2::Sha256::digest(raw.as_bytes());
        name = format!("{name}-{}", &hex::encode(h)[..8]);
    }
    used.insert(name.clone(), path.to_path_buf());
    name
}

fn plan_containers(users: &[(&ContainerInfo, bool)], job: &Job) -> Vec<PlannedContainer> {
    users
        .iter()
        .map(|(c, rw)| {
            let (mode, mode_src) = match c
                .labels
                .get(LABEL_QUIESCE)
                .map(|s| s.parse::<QuiesceAction>())
            {
                Some(Ok(m)) => (m, "label voltar.quiesce".to_string()),
                Some(Err(_)) => (
                    job.quiesce.default,
                    "invalid voltar.quiesce label ignored; config default".to_string(),
                ),
                None if dumped(c).is_some() => (QuiesceAction::None, dumped(c).unwrap_or_default()),
                // offen/docker-volume-backup's label, when voltar's own is absent.
                None if hooks::offen_wants_stop(&c.labels) => (
                    QuiesceAction::Stop,
                    "label docker-volume-backup.stop-during-backup".to_string(),
                ),
                None => (job.quiesce.default, "config default".to_string()),
            };
            let stop_timeout = stop_timeout(c, job.quiesce.stop_timeout);
            // A read-only user is never quiesced, whatever the label or default says: say that first.
            let (action, reason) = if !rw {
                (QuiesceAction::None, "mounted read-only".to_string())
            } else if mode == QuiesceAction::None {
                (QuiesceAction::None, mode_src.clone())
            } else if c.state == ContainerState::Paused {
                (
                    QuiesceAction::None,
                    "already paused: left as is".to_string(),
                )
            } else if c.state != ContainerState::Running {
                (QuiesceAction::None, format!("{}: not running", c.state))
            } else if mode == QuiesceAction::Stop && c.swarm_service().is_some() {
                (
                    QuiesceAction::Pause,
                    "swarm task: paused instead of stopped (swarm would replace a stopped task)"
                        .to_string(),
                )
            } else {
                (mode, mode_src)
            };
            let mut planned = PlannedContainer::new(c, *rw, action, stop_timeout, reason);
            planned.hooks = hooks::resolve(c, &job.hooks);
            planned
        })
        .collect()
}

/// How long a stop waits for `c`: its `voltar.stop-timeout` label, else `default` (the job's setting).
pub fn stop_timeout(c: &ContainerInfo, default: Duration) -> Duration {
    c.labels
        .get(LABEL_STOP_TIMEOUT)
        .and_then(|t| crate::config::parse_duration(t).ok())
        .unwrap_or(default)
}

impl PlannedContainer {
    pub fn new(
        c: &ContainerInfo,
        rw: bool,
        action: QuiesceAction,
        stop_timeout: Duration,
        reason: String,
    ) -> PlannedContainer {
        PlannedContainer {
            id: c.id.clone(),
            name: c.name.clone(),
            compose_project: c.compose_project().map(String::from),
            compose_service: c.compose_service().map(String::from),
            state: c.state.to_string(),
            rw,
            action,
            stop_timeout,
            reason,
            hooks: None,
        }
    }
}

/// Probe a host path for [`plan`]: what kind of thing it is (following no symlinks at the last component).
pub fn probe_path(path: &Path) -> PathKind {
    match std::fs::metadata(path) {
        Err(_) => PathKind::Missing,
        Ok(m) if m.is_dir() => PathKind::Dir,
        Ok(m) if m.is_file() => PathKind::File,
        Ok(_) => PathKind::Special,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::docker::ContainerInfo;

    fn vol(name: &str, labels: &[(&str, &str)]) -> VolumeInfo {
        VolumeInfo {
            name: name.into(),
            driver: "local".into(),
            mountpoint: PathBuf::from(format!("/var/lib/docker/volumes/{name}/_data")),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            options: BTreeMap::new(),
            scope: "local".into(),
        }
    }

    fn ctr(
        name: &str,
        state: ContainerState,
        labels: &[(&str, &str)],
        mounts: Vec<MountInfo>,
    ) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{name}"),
            name: name.into(),
            image: "img".into(),
            state,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mounts,
        }
    }

    fn vmount(vol: &str, rw: bool) -> MountInfo {
        MountInfo {
            kind: MountKind::Volume,
            name: Some(vol.into()),
            source: PathBuf::from(format!("/var/lib/docker/volumes/{vol}/_data")),
            destination: "/data".into(),
            rw,
        }
    }

    fn bmount(path: &str, rw: bool) -> MountInfo {
        MountInfo {
            kind: MountKind::Bind,
            name: None,
            source: PathBuf::from(path),
            destination: "/x".into(),
            rw,
        }
    }

    fn dirs(p: &Path) -> PathKind {
        if p.to_string_lossy().ends_with(".sock") {
            PathKind::Special
        } else {
            PathKind::Dir
        }
    }

    fn job(toml: &str) -> Job {
        Config::parse(toml).unwrap().job(None).unwrap().clone()
    }

    #[test]
    fn default_selects_named_volumes_not_anonymous_nor_binds() {
        let anon = "a".repeat(64);
        let d = Discovery {
            volumes: vec![
                vol("pgdata", &[]),
                vol(&anon, &[]),
                vol("off", &[("voltar.backup", "false")]),
            ],
            containers: vec![ctr(
                "web",
                ContainerState::Running,
                &[],
                vec![bmount("/srv/web", true)],
            )],
        };
        let p = plan(&d, &job(""), &[], &dirs).unwrap();
        let names: Vec<&str> = p.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["pgdata"]);
        let skipped: BTreeMap<&str, &str> = p
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason.as_str()))
            .collect();
        assert!(skipped[anon.as_str()].contains("anonymous"));
        assert!(skipped["off"].contains("voltar.backup=false"));
        assert!(skipped["bind-srv-web"].contains("not opted in"));
    }

    #[test]
    fn quiesce_only_running_rw_users() {
        let d = Discovery {
            volumes: vec![vol("data", &[])],
            containers: vec![
                ctr(
                    "a-rw",
                    ContainerState::Running,
                    &[],
                    vec![vmount("data", true)],
                ),
                ctr(
                    "b-ro",
                    ContainerState::Running,
                    &[],
                    vec![vmount("data", false)],
                ),
                ctr(
                    "c-paused",
                    ContainerState::Paused,
                    &[],
                    vec![vmount("data", true)],
                ),
                ctr(
                    "d-exited",
                    ContainerState::Exited,
                    &[],
                    vec![vmount("data", true)],
                ),
                ctr(
                    "e-label",
                    ContainerState::Running,
                    &[("voltar.quiesce", "stop")],
                    vec![vmount("data", true)],
                ),
                ctr(
                    "f-other",
                    ContainerState::Running,
                    &[],
                    vec![vmount("elsewhere", true)],
                ),
            ],
        };
        let p = plan(
            &d,
            &job("[quiesce]\ndefault = \"pause\"\nstop-timeout = \"5s\"\n"),
            &[],
            &dirs,
        )
        .unwrap();
        let s = &p.sources[0];
        let actions: Vec<(&str, QuiesceAction)> = s
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.action))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("a-rw", QuiesceAction::Pause),
                ("b-ro", QuiesceAction::None),
                ("c-paused", QuiesceAction::None),
                ("d-exited", QuiesceAction::None),
                ("e-label", QuiesceAction::Stop),
            ]
        );
        assert_eq!(s.containers[4].stop_timeout, Duration::from_secs(5));
    }

    #[test]
    fn binds_opt_in_but_never_root_or_sockets() {
        let d = Discovery {
            volumes: vec![],
            containers: vec![ctr(
                "app",
                ContainerState::Running,
                &[("voltar.backup", "true")],
                vec![
                    bmount("/srv/app", true),
                    bmount("/", false),
                    bmount("/var/run/docker.sock", true),
                    bmount("/tmp/x.sock", true),
                ],
            )],
        };
        let p = plan(&d, &job(""), &[], &dirs).unwrap();
        let names: Vec<&str> = p.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["bind-srv-app"]);
        assert_eq!(p.skipped.len(), 3);
        // --only cannot override the hard rules.
        let e = plan(&d, &job(""), &["bind-".to_string()], &dirs).unwrap_err();
        assert!(matches!(e, PlanError::NotSelected { .. }), "{e:?}");
    }

    #[test]
    fn only_filters_and_unknown_is_an_error() {
        let d = Discovery {
            volumes: vec![
                vol("a", &[]),
                vol("b", &[]),
                vol("c", &[("voltar.backup", "false")]),
            ],
            containers: vec![],
        };
        let p = plan(&d, &job(""), &["b".into(), "c".into()], &dirs).unwrap();
        let names: Vec<&str> = p.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["b", "c"]);
        let e = plan(&d, &job(""), &["zz".into()], &dirs).unwrap_err();
        assert!(
            e.to_string().contains("zz") && e.to_string().contains("a, b, c"),
            "{e}"
        );
    }

    #[test]
    fn include_exclude_globs() {
        let d = Discovery {
            volumes: vec![vol("app_db", &[]), vol("app_cache", &[]), vol("other", &[])],
            containers: vec![],
        };
        let p = plan(
            &d,
            &job("[selection]\ninclude = [\"app_*\"]\nexclude = [\"*_cache\"]\n"),
            &[],
            &dirs,
        )
        .unwrap();
        let names: Vec<&str> = p.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["app_db"]);
    }
}
