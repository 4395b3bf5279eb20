//! Plan: pure. Discovery + job config → which sources to back up, which containers to quiesce for each and how.
//! `voltar plan` prints it; `backup --dry-run` stops after it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::catalog::SourceKind;
use crate::config::{Job, QuiesceAction};
use crate::docker::{
    ContainerInfo, ContainerState, Discovery, MountInfo, MountKind, ServiceInfo, ServiceMode,
    VolumeInfo,
};
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

/// A Swarm service whose tasks use a source with quiesce `stop`: scaled to 0 while the source is read and back
/// to its replica count after (stopping a task container would only make the orchestrator replace it). A global
/// service cannot be scaled: the quiesce refuses it, and the source fails with the fix (see `quiesce`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlannedService {
    pub id: String,
    pub name: String,
    /// `replicated` or `global` (or a job mode) at plan time; the quiesce reads it again before acting.
    pub mode: String,
    /// Replica count at plan time (replicated services).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// Its task containers using the source.
    pub tasks: Vec<String>,
    #[serde(with = "secs")]
    pub stop_timeout: Duration,
    pub reason: String,
}

impl PlannedService {
    /// `svc`, acted on for its task containers `tasks` (the first one's stop timeout counts).
    pub fn of(
        svc: &ServiceInfo,
        tasks: Vec<String>,
        stop_timeout: Duration,
        reason: &str,
    ) -> PlannedService {
        let (mode, replicas) = match &svc.mode {
            ServiceMode::Replicated { replicas } => ("replicated".to_string(), Some(*replicas)),
            ServiceMode::Global => ("global".to_string(), None),
            ServiceMode::Other(m) => (m.clone(), None),
        };
        PlannedService {
            id: svc.id.clone(),
            name: svc.name.clone(),
            mode,
            replicas,
            tasks,
            stop_timeout,
            reason: reason.to_string(),
        }
    }

    /// What `voltar plan` says will happen, e.g. `scale web (service, 2 replicas) to 0`.
    pub fn describe(&self) -> String {
        match self.replicas {
            Some(n) => format!("scale {} (service, {n} replicas) to 0", self.name),
            None => format!(
                "refused: {} is a {} service and cannot be scaled to 0 (set the label voltar.quiesce=pause on it to pause its tasks on this node instead)",
                self.name, self.mode
            ),
        }
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
    /// Swarm services scaled to 0 while the source is read (their task containers above are not touched).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub services: Vec<PlannedService>,
    /// Why it was selected.
    pub reason: String,
    /// A `dump` source: the command run in its container (see `dump`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpSpec>,
    /// Read the contents of this volume instead of the one named `name` (a restore's safety backup of the old
    /// contents, which a restore in place through the engine moved into a keep volume). Not planned: `None`.
    #[serde(skip)]
    pub read_volume: Option<String>,
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
    /// Quiesce groups ([`QuiesceGroup`]): the selected sources read in one quiesce window each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<QuiesceGroup>,
}

/// Sources whose containers are held once for all of them: every volume of the group is read inside one quiesce
/// window (`backup/group.rs`), so volumes that must agree with each other are one instant.
///
/// A container is in the group its `voltar.group` label names, else (with `[quiesce] group-by-project = true`)
/// in its compose project's; a source is in the groups of the containers that mount it. Groups are a property
/// of containers, not volumes, because the window is about *who* is held: a volume used by no container needs
/// no window. Two groups that share a source (a volume mounted by containers of both) are one window, named
/// `a+b`, since its read must be one instant with both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct QuiesceGroup {
    pub name: String,
    /// The selected sources of the group, in plan order.
    pub sources: Vec<String>,
    /// What made it a group: `label voltar.group` and/or `compose project (group-by-project)`.
    pub from: String,
}

impl Plan {
    /// The group `source` is read in, when it shares its window with other sources.
    pub fn window_of(&self, source: &str) -> Option<&QuiesceGroup> {
        self.groups
            .iter()
            .find(|g| g.sources.len() > 1 && g.sources.iter().any(|s| s == source))
    }
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
/// A container's quiesce group ([`QuiesceGroup`]).
pub const LABEL_GROUP: &str = "voltar.group";

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
    plan_dumps(discovery, job, &mut plan)?;
    if !only.is_empty() {
        check_only(&plan, only)?;
        promote_named(discovery, job, only, &mut plan);
        keep_only_named(only, &mut plan);
    }
    plan.sources.sort_by(|a, b| a.name.cmp(&b.name));
    plan.skipped.sort_by(|a, b| a.name.cmp(&b.name));
    plan.groups = groups(discovery, job, &plan.sources);
    Ok(plan)
}

/// The quiesce groups of the selected `sources` (see [`QuiesceGroup`]).
fn groups(discovery: &Discovery, job: &Job, sources: &[PlannedSource]) -> Vec<QuiesceGroup> {
    // (group name, what decided it) of a container, if it is in one.
    let group_of = |id: &str| -> Option<(String, &'static str)> {
        let c = discovery.containers.iter().find(|c| c.id == id)?;
        match c.labels.get(LABEL_GROUP).map(|g| g.trim()) {
            Some(g) if !g.is_empty() => Some((g.to_string(), "label voltar.group")),
            _ if job.quiesce.group_by_project => c
                .compose_project()
                .map(|p| (p.to_string(), "compose project (group-by-project)")),
            _ => None,
        }
    };
    // Windows as sets of group names, merged when a source ties two together; each with its sources and origins.
    let mut windows: Vec<(Vec<String>, Vec<String>, Vec<&'static str>)> = Vec::new();
    // A dump is its own consistent copy, taken while its container runs: never part of a quiesce window.
    for s in sources.iter().filter(|s| s.dump.is_none()) {
        let mut names = Vec::new();
        let mut from = Vec::new();
        for c in &s.containers {
            if let Some((g, f)) = group_of(&c.id) {
                if !names.contains(&g) {
                    names.push(g);
                }
                if !from.contains(&f) {
                    from.push(f);
                }
            }
        }
        if names.is_empty() {
            continue;
        }
        let mut merged = (names, vec![s.name.clone()], from);
        let mut i = 0;
        while i < windows.len() {
            if windows[i].0.iter().any(|g| merged.0.contains(g)) {
                let (n, srcs, f) = windows.remove(i);
                for g in n {
                    if !merged.0.contains(&g) {
                        merged.0.push(g);
                    }
                }
                let mut srcs = srcs;
                srcs.append(&mut merged.1);
                merged.1 = srcs;
                for x in f {
                    if !merged.2.contains(&x) {
                        merged.2.push(x);
                    }
                }
            } else {
                i += 1;
            }
        }
        windows.push(merged);
    }
    let order = |name: &str| sources.iter().position(|s| s.name == name);
    let mut out: Vec<QuiesceGroup> = windows
        .into_iter()
        .map(|(mut names, mut srcs, mut from)| {
            names.sort();
            srcs.sort_by_key(|s| order(s));
            from.sort();
            QuiesceGroup {
                name: names.join("+"),
                sources: srcs,
                from: from.join(", "),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Every named volume: selected (with the containers that use it) or skipped, with the reason.
fn plan_volumes(discovery: &Discovery, job: &Job, plan: &mut Plan) -> Result<(), PlanError> {
    let include = globs(&job.selection.include)?;
    let exclude = globs(&job.selection.exclude)?;
    for v in &discovery.volumes {
        let users: Vec<(&ContainerInfo, bool)> = users_of(discovery, |m| {
            m.kind == MountKind::Volume && m.name.as_deref() == Some(v.name.as_str())
        });
        match restore_volume(discovery, v)
            .map_or_else(|| select_volume(v, &users, &include, &exclude), Err)
        {
            Ok(reason) => plan.sources.push(PlannedSource {
                read_volume: None,
                name: v.name.clone(),
                kind: SourceKind::Volume,
                path: v.mountpoint.clone(),
                driver: Some(v.driver.clone()),
                driver_opts: v.options.clone(),
                labels: v.labels.clone(),
                containers: plan_containers(&users, job, &discovery.services),
                services: plan_services(&users, job, &discovery.services),
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

/// Why a volume that a voltar restore in place through the engine makes or writes is not read as a source: one a
/// running helper (the mirror) writes holds a half-written tree (a hard rule: `--only` cannot take it either);
/// a staging volume is the restore's own; a keep volume holds a target's previous contents for the user (named
/// with `--only`, it is backed up).
fn restore_volume(discovery: &Discovery, v: &VolumeInfo) -> Option<String> {
    use crate::docker::helper::{LABEL_HELPER, LABEL_KEEP_OF, LABEL_STAGING_OF};
    let writer = discovery.containers.iter().find(|c| {
        c.labels.contains_key(LABEL_HELPER)
            && matches!(c.state, ContainerState::Running | ContainerState::Paused)
            && c.mounts.iter().any(|m| {
                m.kind == MountKind::Volume && m.rw && m.name.as_deref() == Some(v.name.as_str())
            })
    });
    if let Some(h) = writer {
        return Some(format!(
            "{HARD_RULE}while a voltar restore writes it (helper container {})",
            h.name
        ));
    }
    if let Some(of) = v.labels.get(LABEL_STAGING_OF) {
        return Some(format!("the staging volume of a voltar restore into {of}"));
    }
    v.labels.get(LABEL_KEEP_OF).map(|of| {
        format!(
            "the previous contents of {of}, kept by a voltar restore in place (name it with --only to back it up)"
        )
    })
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
                read_volume: None,
                name,
                kind: SourceKind::Bind,
                path: path.clone(),
                driver: None,
                driver_opts: BTreeMap::new(),
                labels: BTreeMap::new(),
                containers: plan_containers(&users, job, &discovery.services),
                services: plan_services(&users, job, &discovery.services),
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
            // A dump the job's selection left out comes back by name; one whose container does not run cannot be
            // made to run by naming it.
            let c = discovery
                .containers
                .iter()
                .find(|c| s.used_by.first() == Some(&c.name));
            match c.and_then(|c| Some((c, dump::resolve(c)?))) {
                Some((c, spec)) if dump::runnable(c).is_ok() => {
                    let mut d = dump_source(c, spec);
                    d.reason = format!("named with --only (was: {})", s.reason);
                    plan.sources.push(d);
                }
                _ => plan.skipped.push(s),
            }
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
            read_volume: None,
            name: s.name.clone(),
            kind: s.kind,
            path: s.path.clone(),
            driver: vol.map(|v| v.driver.clone()),
            driver_opts: vol.map(|v| v.options.clone()).unwrap_or_default(),
            labels: vol.map(|v| v.labels.clone()).unwrap_or_default(),
            containers: plan_containers(&users, job, &discovery.services),
            services: plan_services(&users, job, &discovery.services),
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
/// runs and the job selects it, else skipped with the reason (its volumes are then archived as usual). The job
/// selects a dump that goes with one of its container's selected volumes or bind mounts, or whose own name its
/// `selection.include` matches; `selection.exclude` on the name leaves it out. With `voltar.dump-only=true` the
/// volumes and bind mounts that container mounts are skipped: the dump is their backup.
fn plan_dumps(discovery: &Discovery, job: &Job, plan: &mut Plan) -> Result<(), PlanError> {
    let include = globs(&job.selection.include)?;
    let exclude = globs(&job.selection.exclude)?;
    for c in &discovery.containers {
        let Some(spec) = dump::resolve(c) else {
            continue;
        };
        let name = dump::source_name(&c.name);
        let with_its_data = plan
            .sources
            .iter()
            .any(|s| s.kind != SourceKind::Dump && s.containers.iter().any(|u| u.id == c.id));
        let not_selected = if exclude.is_match(&name) {
            Some("excluded by selection.exclude".to_string())
        } else if !with_its_data && !include.is_match(&name) {
            Some(format!(
                "none of {}'s volumes is selected and selection.include does not match {name}",
                c.name
            ))
        } else {
            None
        };
        if let Some(reason) = dump::runnable(c).err().or(not_selected) {
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
        plan.sources.push(dump_source(c, spec));
    }
    Ok(())
}

/// The source `dump@<container>` of a running container `c` with dump `spec`.
fn dump_source(c: &ContainerInfo, spec: DumpSpec) -> PlannedSource {
    let runs = PlannedContainer::new(
        c,
        false,
        QuiesceAction::None,
        Duration::ZERO,
        format!("runs the dump, not paused or stopped; {}", spec.from),
    );
    PlannedSource {
        read_volume: None,
        name: dump::source_name(&c.name),
        kind: SourceKind::Dump,
        path: PathBuf::new(),
        driver: None,
        driver_opts: BTreeMap::new(),
        labels: BTreeMap::new(),
        containers: vec![runs],
        services: vec![],
        reason: spec.from.clone(),
        dump: Some(spec),
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
    let kept: Vec<&str> = plan.sources.iter().map(|s| s.name.as_str()).collect();
    for g in &mut plan.groups {
        g.sources.retain(|s| kept.contains(&s.as_str()));
    }
    plan.groups.retain(|g| !g.sources.is_empty());
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
        // voltar's own helper containers are never users: never paused, stopped or hooked.
        .filter(|c| !c.labels.contains_key(crate::docker::helper::LABEL_HELPER))
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

/// The quiesce mode asked for `c`, and what decided it: its `voltar.quiesce` label (for a Swarm task this includes
/// the service's `--container-label`s, which the engine copies onto each task), else its service's own label
/// (`docker service create --label`), else offen's label, else the job's default.
fn quiesce_mode(
    c: &ContainerInfo,
    service: Option<&ServiceInfo>,
    job: &Job,
) -> (QuiesceAction, String) {
    // A container whose dump is a source is not quiesced for its volumes unless a label says so.
    let dump_reason = dumped(c);
    let (mode, src): (QuiesceAction, &str) = match c
        .labels
        .get(LABEL_QUIESCE)
        .map(|s| (s.parse::<QuiesceAction>(), "label voltar.quiesce"))
        .or_else(|| {
            service.and_then(|s| s.labels.get(LABEL_QUIESCE)).map(|s| {
                (
                    s.parse::<QuiesceAction>(),
                    "label voltar.quiesce of its swarm service",
                )
            })
        }) {
        Some((Ok(m), src)) => (m, src),
        Some((Err(_), _)) => (
            job.quiesce.default,
            "invalid voltar.quiesce label ignored; config default",
        ),
        None if dump_reason.is_some() => {
            return (QuiesceAction::None, dump_reason.unwrap_or_default());
        }
        // offen/docker-volume-backup's label, when voltar's own is absent.
        None if hooks::offen_wants_stop(&c.labels) => (
            QuiesceAction::Stop,
            "label docker-volume-backup.stop-during-backup",
        ),
        None => (job.quiesce.default, "config default"),
    };
    (mode, src.to_string())
}

/// The service of a Swarm task container, when discovery could read it.
fn service_of<'a>(c: &ContainerInfo, services: &'a [ServiceInfo]) -> Option<&'a ServiceInfo> {
    let id = c.swarm_service_id()?;
    services.iter().find(|s| s.id == id)
}

/// Whether `c` is a running read-write task whose service is acted on as a whole (scaled, or refused when it
/// cannot be) instead of the container itself.
fn scaled_with_service<'a>(
    c: &ContainerInfo,
    rw: bool,
    job: &Job,
    services: &'a [ServiceInfo],
) -> Option<&'a ServiceInfo> {
    let svc = service_of(c, services)?;
    (rw && c.state == ContainerState::Running
        && quiesce_mode(c, Some(svc), job).0 == QuiesceAction::Stop)
        .then_some(svc)
}

fn plan_containers(
    users: &[(&ContainerInfo, bool)],
    job: &Job,
    services: &[ServiceInfo],
) -> Vec<PlannedContainer> {
    users
        .iter()
        .map(|(c, rw)| {
            let service = service_of(c, services);
            let (mode, mode_src) = quiesce_mode(c, service, job);
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
            } else if let Some(svc) = scaled_with_service(c, *rw, job, services) {
                (
                    QuiesceAction::None,
                    format!("swarm task: its service {} is acted on instead", svc.name),
                )
            } else if mode == QuiesceAction::Stop
                && (c.swarm_service().is_some() || c.swarm_service_id().is_some())
            {
                // A service voltar cannot read (a worker node): pausing does not make swarm replace the task.
                (
                    QuiesceAction::Pause,
                    "swarm task: paused instead of stopped (its service cannot be read here to scale it; swarm would replace a stopped task)"
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

/// The Swarm services to scale to 0 for a source: one per service, however many of its tasks use the source.
fn plan_services(
    users: &[(&ContainerInfo, bool)],
    job: &Job,
    services: &[ServiceInfo],
) -> Vec<PlannedService> {
    let mut out: Vec<PlannedService> = Vec::new();
    for (c, rw) in users {
        let Some(svc) = scaled_with_service(c, *rw, job, services) else {
            continue;
        };
        if let Some(p) = out.iter_mut().find(|p| p.id == svc.id) {
            p.tasks.push(c.name.clone());
            p.stop_timeout = p
                .stop_timeout
                .max(stop_timeout(c, job.quiesce.stop_timeout));
            continue;
        }
        out.push(PlannedService::of(
            svc,
            vec![c.name.clone()],
            stop_timeout(c, job.quiesce.stop_timeout),
            &quiesce_mode(c, Some(svc), job).1,
        ));
    }
    out
}

/// How long a stop waits for `c`: its `voltar.stop-timeout` label (a duration, or whole seconds as Docker's own
/// `--stop-timeout` takes them), else `default` (the job's setting). A label that is neither is reported (a
/// warning) and the default used.
pub fn stop_timeout(c: &ContainerInfo, default: Duration) -> Duration {
    let Some(t) = c.labels.get(LABEL_STOP_TIMEOUT) else {
        return default;
    };
    match t.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => crate::config::parse_duration(t).unwrap_or_else(|e| {
            tracing::warn!(
                "container {}: label {LABEL_STOP_TIMEOUT}: {e} (or whole seconds, e.g. 30); using {}s",
                c.name,
                default.as_secs()
            );
            default
        }),
    }
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
            services: vec![],
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
            services: vec![],
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
            services: vec![],
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
            services: vec![],
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
            services: vec![],
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

    /// What a restore in place through the engine makes and writes is never read as an ordinary source: a volume
    /// a running voltar helper (the mirror) writes is skipped, and even `--only` cannot take it (its contents are
    /// half-written); a restore's staging volume and the keep volume of a target's previous contents are skipped
    /// by default (naming them takes them); a helper container is never a user to pause or stop.
    #[test]
    fn volumes_a_restore_is_writing_are_never_read() {
        let d = Discovery {
            volumes: vec![
                vol("target", &[]),
                vol(
                    "voltar-staging-1a2b3c4d",
                    &[("voltar.staging-of", "target")],
                ),
                vol("voltar-keep-5e6f7a8b", &[("voltar.keep-of", "target")]),
                vol("other", &[]),
            ],
            containers: vec![
                ctr(
                    "app",
                    ContainerState::Exited,
                    &[],
                    vec![vmount("target", true)],
                ),
                ctr(
                    "voltar-helper-0badf00d",
                    ContainerState::Running,
                    &[("voltar.helper", "run-1")],
                    vec![
                        vmount("target", true),
                        vmount("voltar-staging-1a2b3c4d", false),
                    ],
                ),
                ctr(
                    "voltar-helper-reader",
                    ContainerState::Created,
                    &[("voltar.helper", "run-2")],
                    vec![vmount("other", false)],
                ),
            ],
            services: vec![],
        };
        let p = plan(&d, &job(""), &[], &dirs).unwrap();
        let names: Vec<&str> = p.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["other"], "{p:#?}");
        assert!(
            p.sources[0].containers.is_empty(),
            "a helper is no user: {p:#?}"
        );
        let why = |name: &str| {
            p.skipped
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.reason.clone())
                .unwrap_or_else(|| panic!("{name} not skipped: {p:#?}"))
        };
        assert!(
            why("target").contains("voltar-helper-0badf00d"),
            "{}",
            why("target")
        );
        assert!(why("voltar-staging-1a2b3c4d").contains("staging"));
        assert!(why("voltar-keep-5e6f7a8b").contains("previous contents of target"));
        let e = plan(&d, &job(""), &["target".into()], &dirs).unwrap_err();
        assert!(e.to_string().contains("voltar-helper-0badf00d"), "{e}");
        let p = plan(&d, &job(""), &["voltar-keep-5e6f7a8b".into()], &dirs).unwrap();
        assert_eq!(p.sources.len(), 1, "{p:#?}");
    }

    /// `voltar.stop-timeout` takes a duration or whole seconds (as `docker stop -t` / `--stop-timeout` do); a value
    /// that is neither falls back to the default (it was silently the default for `60` too).
    #[test]
    fn stop_timeout_label_takes_durations_and_whole_seconds() {
        let with = |v: &str| {
            ctr(
                "c",
                ContainerState::Running,
                &[(LABEL_STOP_TIMEOUT, v)],
                vec![],
            )
        };
        let d = Duration::from_secs(30);
        assert_eq!(stop_timeout(&with("1"), d), Duration::from_secs(1));
        assert_eq!(stop_timeout(&with(" 120 "), d), Duration::from_secs(120));
        assert_eq!(stop_timeout(&with("2m"), d), Duration::from_secs(120));
        assert_eq!(stop_timeout(&with("soon"), d), d);
        assert_eq!(
            stop_timeout(&ctr("c", ContainerState::Running, &[], vec![]), d),
            d
        );
    }

    /// A dump follows the job's selection: it goes with its container's selected volumes or with its own name
    /// (`dump@<container>`) in `selection.include`; `selection.exclude` on its name leaves it out; `--only` names
    /// it back in. (It used to be in every job, whatever the job selected.)
    #[test]
    fn dumps_follow_the_jobs_selection() {
        let d = Discovery {
            volumes: vec![vol("pgdata", &[]), vol("files", &[])],
            containers: vec![
                ctr(
                    "db",
                    ContainerState::Running,
                    &[("voltar.dump", "postgres")],
                    vec![vmount("pgdata", true)],
                ),
                ctr(
                    "web",
                    ContainerState::Running,
                    &[],
                    vec![vmount("files", true)],
                ),
            ],
            services: vec![],
        };
        let selected =
            |p: &Plan| -> Vec<String> { p.sources.iter().map(|s| s.name.clone()).collect() };
        let skipped = |p: &Plan, name: &str| -> Option<String> {
            p.skipped
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.reason.clone())
        };
        // Default (`*`): the dump and both volumes.
        let p = plan(&d, &job(""), &[], &dirs).unwrap();
        assert_eq!(selected(&p), vec!["dump@db", "files", "pgdata"]);
        // A job for the files only: no dump of the database.
        let p = plan(&d, &job("[selection]\ninclude = [\"files\"]\n"), &[], &dirs).unwrap();
        assert_eq!(selected(&p), vec!["files"]);
        let why = skipped(&p, "dump@db").expect("the dump is listed as skipped");
        assert!(why.contains("selection.include"), "{why}");
        // A job for the database's volume: its dump too.
        let p = plan(
            &d,
            &job("[selection]\ninclude = [\"pgdata\"]\n"),
            &[],
            &dirs,
        )
        .unwrap();
        assert_eq!(selected(&p), vec!["dump@db", "pgdata"]);
        // Or by the dump's own name.
        let p = plan(
            &d,
            &job("[selection]\ninclude = [\"dump@*\"]\n"),
            &[],
            &dirs,
        )
        .unwrap();
        assert_eq!(selected(&p), vec!["dump@db"]);
        // Excluded by name.
        let p = plan(
            &d,
            &job("[selection]\nexclude = [\"dump@*\"]\n"),
            &[],
            &dirs,
        )
        .unwrap();
        assert_eq!(selected(&p), vec!["files", "pgdata"]);
        let why = skipped(&p, "dump@db").expect("the dump is listed as skipped");
        assert!(why.contains("selection.exclude"), "{why}");
        // `--only` names it back in, from a job that does not select it.
        let p = plan(
            &d,
            &job("[selection]\ninclude = [\"files\"]\n"),
            &["dump@db".into()],
            &dirs,
        )
        .unwrap();
        assert_eq!(selected(&p), vec!["dump@db"]);
        assert!(p.sources[0].dump.is_some(), "{p:#?}");
    }

    fn groups_of(p: &Plan) -> Vec<(String, Vec<String>, String)> {
        p.groups
            .iter()
            .map(|g| (g.name.clone(), g.sources.clone(), g.from.clone()))
            .collect()
    }

    /// Issue 13: the volumes of a `voltar.group` (or, with group-by-project, of a compose project) are one
    /// window; a volume shared by two groups ties them into one; nothing is grouped by default.
    #[test]
    fn groups_by_label_and_by_compose_project() {
        let project = |p: &'static str| ("com.docker.compose.project", p);
        let d = Discovery {
            volumes: vec![
                vol("db", &[]),
                vol("files", &[]),
                vol("cache", &[]),
                vol("m1", &[]),
                vol("m2", &[]),
                vol("alone", &[]),
            ],
            containers: vec![
                ctr(
                    "pg",
                    ContainerState::Running,
                    &[project("shop")],
                    vec![vmount("db", true)],
                ),
                ctr(
                    "web",
                    ContainerState::Running,
                    &[project("shop")],
                    vec![vmount("files", true), vmount("cache", true)],
                ),
                ctr(
                    "mail",
                    ContainerState::Running,
                    &[("voltar.group", "mail"), project("shop")],
                    vec![vmount("m1", true)],
                ),
                ctr(
                    "mail2",
                    ContainerState::Running,
                    &[("voltar.group", "mail")],
                    vec![vmount("m2", true)],
                ),
                ctr(
                    "other",
                    ContainerState::Running,
                    &[],
                    vec![vmount("alone", true)],
                ),
            ],
            services: vec![],
        };
        // Default: only the label groups.
        let p = plan(&d, &job(""), &[], &dirs).unwrap();
        assert_eq!(
            groups_of(&p),
            vec![(
                "mail".to_string(),
                vec!["m1".to_string(), "m2".to_string()],
                "label voltar.group".to_string()
            )]
        );
        assert_eq!(p.window_of("m2").map(|g| g.name.as_str()), Some("mail"));
        assert_eq!(p.window_of("db"), None);
        // group-by-project: the project is the default group; the label still wins for `mail`.
        let p = plan(&d, &job("[quiesce]\ngroup-by-project = true\n"), &[], &dirs).unwrap();
        assert_eq!(
            groups_of(&p),
            vec![
                (
                    "mail".to_string(),
                    vec!["m1".to_string(), "m2".to_string()],
                    "label voltar.group".to_string()
                ),
                (
                    "shop".to_string(),
                    vec!["cache".to_string(), "db".to_string(), "files".to_string()],
                    "compose project (group-by-project)".to_string()
                ),
            ]
        );
        // A volume mounted by containers of two groups ties them into one window.
        let mut d2 = d.clone();
        d2.containers[4].mounts.push(vmount("m1", false));
        d2.containers[4]
            .labels
            .insert("voltar.group".into(), "other".into());
        let p = plan(&d2, &job(""), &[], &dirs).unwrap();
        assert_eq!(p.groups.len(), 1, "{p:#?}");
        assert_eq!(p.groups[0].name, "mail+other");
        assert_eq!(p.groups[0].sources, vec!["alone", "m1", "m2"]);
        // --only keeps only the named members.
        let p = plan(&d, &job(""), &["m1".into()], &dirs).unwrap();
        assert_eq!(p.groups[0].sources, vec!["m1"]);
        assert_eq!(p.window_of("m1"), None, "a group of one is no window");
        // A dump of a grouped container is a source of its own, never read inside the window.
        let mut d3 = d.clone();
        d3.containers[2]
            .labels
            .insert("voltar.dump".into(), "postgres".into());
        let p = plan(&d3, &job(""), &[], &dirs).unwrap();
        assert!(
            p.sources.iter().any(|s| s.dump.is_some()),
            "the dump is planned: {p:#?}"
        );
        assert_eq!(p.groups[0].sources, vec!["m1", "m2"], "{p:#?}");
    }

    fn service(id: &str, mode: ServiceMode, labels: &[(&str, &str)]) -> ServiceInfo {
        ServiceInfo {
            id: id.into(),
            name: format!("{id}-name"),
            version: 7,
            mode,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            container_labels: BTreeMap::new(),
        }
    }

    fn task(name: &str, service_id: &str, labels: &[(&str, &str)], rw: bool) -> ContainerInfo {
        let mut l: Vec<(&str, &str)> = vec![("com.docker.swarm.service.id", service_id)];
        l.extend_from_slice(labels);
        ctr(name, ContainerState::Running, &l, vec![vmount("data", rw)])
    }

    /// Swarm tasks with quiesce `stop` put their service in the plan once (however many tasks), their containers
    /// are not touched; the label comes from the container (`--container-label`) or else the service (`--label`);
    /// a container label wins; a global service is planned too (the quiesce refuses it, with the fix); `pause`
    /// pauses the task; a service discovery could not read (a worker node) falls back to pausing the task.
    #[test]
    fn swarm_tasks_with_stop_scale_their_service_once() {
        let services = vec![
            service(
                "s-web",
                ServiceMode::Replicated { replicas: 2 },
                &[("voltar.quiesce", "stop")],
            ),
            service(
                "s-cl",
                ServiceMode::Replicated { replicas: 1 },
                &[("voltar.quiesce", "none")],
            ),
            service("s-glob", ServiceMode::Global, &[("voltar.quiesce", "stop")]),
            service(
                "s-pause",
                ServiceMode::Replicated { replicas: 1 },
                &[("voltar.quiesce", "pause")],
            ),
        ];
        let d = Discovery {
            volumes: vec![vol("data", &[])],
            containers: vec![
                task("web.1", "s-web", &[], true),
                task("web.2", "s-web", &[], true),
                task("cl.1", "s-cl", &[("voltar.quiesce", "stop")], true),
                task("glob.x", "s-glob", &[], true),
                task("pause.1", "s-pause", &[], true),
                task("ro.1", "s-web", &[], false),
                task("unread.1", "s-unknown", &[("voltar.quiesce", "stop")], true),
            ],
            services,
        };
        let p = plan(&d, &job(""), &[], &dirs).unwrap();
        let s = &p.sources[0];
        let svcs: Vec<(&str, Option<u64>, Vec<&str>)> = s
            .services
            .iter()
            .map(|v| {
                (
                    v.name.as_str(),
                    v.replicas,
                    v.tasks.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            svcs,
            vec![
                ("s-cl-name", Some(1), vec!["cl.1"]),
                ("s-glob-name", None, vec!["glob.x"]),
                ("s-web-name", Some(2), vec!["web.1", "web.2"]),
            ]
        );
        assert_eq!(
            s.services[2].describe(),
            "scale s-web-name (service, 2 replicas) to 0"
        );
        assert!(s.services[1].describe().contains("voltar.quiesce=pause"));
        let actions: Vec<(&str, QuiesceAction)> = s
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.action))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("cl.1", QuiesceAction::None),
                ("glob.x", QuiesceAction::None),
                ("pause.1", QuiesceAction::Pause),
                ("ro.1", QuiesceAction::None),
                ("unread.1", QuiesceAction::Pause),
                ("web.1", QuiesceAction::None),
                ("web.2", QuiesceAction::None),
            ]
        );
    }
}
