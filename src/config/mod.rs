//! Configuration in two stages: raw serde structs that mirror the TOML file exactly (`deny_unknown_fields`,
//! kebab-case, so a typo is an error naming the key), then a validated [`Config`] the rest of the crate uses.
//! CLI flags are a separate type (`cli`) applied on top. Secrets are read from `*_file` keys or the environment,
//! never stored in the TOML itself; a secrets file readable by group or others is refused.
//!
//! This is the bottom floor of the crate: it imports nothing from it. The settings types the file is parsed into
//! are defined here once (quiesce, retention, targets) and the domain modules read them (`retention` plans with
//! [`Retention`], `storage` opens a [`Target`], the manifest records a [`QuiesceAction`]).
//!
//! `raw` is the file as written, `retention` the retention settings, `target` the targets and `--target` words,
//! `units` durations, sizes and secret files; this file is [`Config`] itself: loading, validating, jobs.
//!
//! With no config file at all, [`Config::default`] is a usable configuration: one job `default`, all named
//! volumes, quiesce `none`, no targets (so `--target` is needed).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod hooks;
mod notify;
mod raw;
mod retention;
mod schedule;
mod target;
mod units;

use hooks::merge_hooks;
pub use hooks::{ContainerHookConfig, HookCommand, Hooks, OnError, DEFAULT_HOOK_TIMEOUT};
pub use notify::{
    redact_url, Notify, NotifyKind, NotifyOn, RawNotify, ReceiverUrl, Secret, Smtp, SmtpTls,
};
pub use raw::RawConfig;
use raw::{RawArchive, RawEncryption, RawJob, RawQuiesce, RawSelection};
use retention::merge_retention;
pub use retention::{Policy, RawRetention, Retention};
pub use schedule::{cron, machine_zone, Daemon, JobSchedule, ZoneFrom, DEFAULT_LISTEN};
pub use target::{
    ChecksumMode, Placeholders, S3Target, Target, TargetKind, CHECK_TIMEOUT, PLACEHOLDERS,
};
pub use units::{parse_duration, parse_size, read_secret_file};

/// Where the config is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATHS: &[&str] = &["/etc/voltar/config.toml", "voltar.toml"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("secret file {path}: {message}")]
    Secret { path: PathBuf, message: String },
    /// A `--target` bare word that names neither a configured target nor an existing directory.
    #[error("unknown target `{name}`: {detail}")]
    UnknownTarget { name: String, detail: String },
}

#[derive(Clone, Debug)]
pub struct Selection {
    /// Glob patterns of volume names to include (default `*`).
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Back up every bind mount of every container (still never `/`, sockets or devices).
    pub bind_mounts: bool,
    /// Glob patterns of host paths of bind mounts to include.
    pub include_binds: Vec<String>,
    pub exclude_binds: Vec<String>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            include: vec!["*".into()],
            exclude: vec![],
            bind_mounts: false,
            include_binds: vec![],
            exclude_binds: vec![],
        }
    }
}

#[derive(Clone, Debug)]
pub struct Quiesce {
    pub default: QuiesceAction,
    pub stop_timeout: Duration,
    /// The longest a source's read may keep its containers paused or stopped; past it the source is aborted
    /// and the containers are resumed.
    pub max_downtime: Duration,
    /// A container's compose project is its quiesce group when it has no `voltar.group` label: the volumes of
    /// one project are read in one quiesce window.
    pub group_by_project: bool,
}

/// Default of `[quiesce] max-downtime`.
pub const DEFAULT_MAX_DOWNTIME: Duration = Duration::from_secs(600);

impl Default for Quiesce {
    fn default() -> Self {
        Quiesce {
            default: QuiesceAction::None,
            stop_timeout: Duration::from_secs(30),
            max_downtime: DEFAULT_MAX_DOWNTIME,
            group_by_project: false,
        }
    }
}

/// `[docker] data-path`: where a volume's contents are read from and restored to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataPath {
    /// The host path when this process can read it, else the engine.
    #[default]
    Auto,
    /// Only the host path (`/var/lib/docker/volumes/…`): a volume that is not readable here fails.
    Host,
    /// Always through the engine: a helper container with the volume mounted, and the archive API.
    Engine,
}

impl fmt::Display for DataPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataPath::Auto => "auto",
            DataPath::Host => "host",
            DataPath::Engine => "engine",
        })
    }
}

impl FromStr for DataPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DataPath::Auto),
            "host" => Ok(DataPath::Host),
            "engine" => Ok(DataPath::Engine),
            other => Err(format!(
                "`{other}` is not a data path (use auto, host or engine)"
            )),
        }
    }
}

/// What is done to a container while a source is read, as the config and labels name it and as the manifest
/// records it (`none`, `pause`, `stop`: this serde form is in every manifest and must not change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuiesceAction {
    /// Nothing: the container kept running (or was not running).
    None,
    Pause,
    Stop,
}

impl fmt::Display for QuiesceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuiesceAction::None => "none",
            QuiesceAction::Pause => "pause",
            QuiesceAction::Stop => "stop",
        })
    }
}

impl FromStr for QuiesceAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(QuiesceAction::None),
            "pause" => Ok(QuiesceAction::Pause),
            "stop" => Ok(QuiesceAction::Stop),
            other => Err(format!(
                "`{other}` is not a quiesce mode (use pause, stop or none)"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Archive {
    pub zstd_level: i32,
    /// 0 = one per core plus one.
    pub zstd_threads: u32,
}

impl Default for Archive {
    fn default() -> Self {
        Archive {
            zstd_level: 3,
            zstd_threads: 0,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Encryption {
    /// `age1…` or ssh public keys.
    pub recipients: Vec<String>,
    /// Path of the passphrase file (read when needed).
    pub passphrase_file: Option<PathBuf>,
}

impl Encryption {
    pub fn enabled(&self) -> bool {
        !self.recipients.is_empty() || self.passphrase_file.is_some()
    }
}

#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    /// Names of targets in [`Config::targets`].
    pub targets: Vec<String>,
    pub selection: Selection,
    pub quiesce: Quiesce,
    pub retention: Retention,
    /// Prune after each successful backup.
    pub prune: bool,
    /// `healthcheck-url`: pinged at the start and end of each run (healthchecks.io convention).
    pub healthcheck_url: Option<ReceiverUrl>,
    /// Host hooks around the run and container hooks around each source's read.
    pub hooks: Hooks,
    /// When `voltar daemon` runs it; `None`: not scheduled (one-shot `voltar backup --job` only).
    pub schedule: Option<JobSchedule>,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Where the crash journal and locks live.
    pub state_dir: PathBuf,
    /// Where a backup spools the stream of a target that falls behind while containers are held; `None`:
    /// `<state_dir>/spool` (see [`Config::spool_dir`]).
    pub spool_dir: Option<PathBuf>,
    pub docker_host: Option<String>,
    /// `[docker] data-path`: how volume contents are read and written (host path or the engine's archive API).
    pub data_path: DataPath,
    /// `[docker] helper-image`: the image of the helper containers the engine data path creates (never pulled);
    /// `None`: an image of a container that uses the volume, else voltar's own image when the engine has it.
    pub helper_image: Option<String>,
    /// `[docker] mirror-image`: the image whose `/usr/local/bin/voltar` runs `engine-mirror` for a restore in
    /// place through the engine (never pulled); `None`: the image of voltar's own container, else
    /// `voltar:<version>`.
    pub mirror_image: Option<String>,
    pub archive: Archive,
    pub encryption: Encryption,
    pub targets: BTreeMap<String, Target>,
    pub jobs: BTreeMap<String, Job>,
    /// `[[notify]]`: told about every job's runs.
    pub notify: Vec<Notify>,
    /// `[daemon]`: the health and metrics listener.
    pub daemon: Daemon,
    /// Path the config was read from, if any.
    pub source: Option<PathBuf>,
    /// The node this run works for, when this run knows it: what `{node}` stood for (`VOLTAR_NODE`, else the
    /// engine's name), filled in by [`Config::expand_targets`]. A manifest's `host` names it (in a container,
    /// the machine's own host name is the container's).
    pub node: Option<String>,
}

pub const DEFAULT_JOB: &str = "default";

impl Default for Config {
    fn default() -> Self {
        let mut jobs = BTreeMap::new();
        jobs.insert(
            DEFAULT_JOB.to_string(),
            Job {
                name: DEFAULT_JOB.into(),
                targets: vec![],
                selection: Selection::default(),
                quiesce: Quiesce::default(),
                retention: Retention::default(),
                prune: false,
                healthcheck_url: None,
                hooks: Hooks::default(),
                schedule: None,
            },
        );
        Config {
            state_dir: default_state_dir(),
            spool_dir: None,
            docker_host: None,
            data_path: DataPath::Auto,
            helper_image: None,
            mirror_image: None,
            archive: Archive::default(),
            encryption: Encryption::default(),
            targets: BTreeMap::new(),
            jobs,
            notify: vec![],
            daemon: Daemon::default(),
            source: None,
            node: None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VOLTAR_STATE_DIR") {
        return PathBuf::from(d);
    }
    // root: /var/lib/voltar; others: $XDG_STATE_HOME/voltar or ~/.local/state/voltar.
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/voltar");
    }
    if let Ok(x) = std::env::var("XDG_STATE_HOME") {
        return PathBuf::from(x).join("voltar");
    }
    match std::env::var("HOME") {
        Ok(h) => PathBuf::from(h).join(".local/state/voltar"),
        Err(_) => std::env::temp_dir().join("voltar-state"),
    }
}

/// `line L, column C: <what>` — the toml crate's own rendering spans several lines with a source excerpt, which
/// reads as noise once folded into one error line.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let mut what = e.message().trim().replace('\n', " ");
    // serde names Rust types ("expected u32"): say what the user has to write.
    for (rust, words) in [
        ("u8", "a whole number (0 or more)"),
        ("u16", "a whole number (0 or more)"),
        ("u32", "a whole number (0 or more)"),
        ("u64", "a whole number (0 or more)"),
        ("usize", "a whole number (0 or more)"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
        ("f32", "a number"),
        ("f64", "a number"),
    ] {
        if let Some(head) = what.strip_suffix(&format!("expected {rust}")) {
            what = format!("{head}expected {words}");
        }
    }
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {what}")
        }
        None => what,
    }
}

impl Config {
    /// The spool directory: `spool-dir`, else `<state-dir>/spool`.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("spool"))
    }

    /// Load from `path`, or from the first of [`DEFAULT_CONFIG_PATHS`] that exists, or defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => DEFAULT_CONFIG_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
        };
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                let mut c = Config::parse(&text).map_err(|e| match e {
                    ConfigError::Parse { message, .. } => ConfigError::Parse {
                        path: p.clone(),
                        message,
                    },
                    ConfigError::Invalid(message) => ConfigError::Parse {
                        path: p.clone(),
                        message,
                    },
                    other => other,
                })?;
                c.source = Some(p);
                Ok(c)
            }
        }
    }

    /// Parse and validate TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: toml_message(text, &e),
        })?;
        Config::validate(raw)
    }

    /// The validated config of a parsed file: defaults filled in, every value checked, each message naming its
    /// key. The top-level sections are the base every job starts from.
    pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        if let Some(d) = raw.state_dir {
            c.state_dir = d;
        }
        c.spool_dir = raw.spool_dir;
        if let Some(d) = raw.docker {
            c.docker_host = d.host;
            if let Some(p) = d.data_path {
                c.data_path = p
                    .parse()
                    .map_err(|e| ConfigError::Invalid(format!("[docker] data-path: {e}")))?;
            }
            c.helper_image = d.helper_image.filter(|i| !i.trim().is_empty());
            c.mirror_image = d.mirror_image.filter(|i| !i.trim().is_empty());
        }
        c.daemon = schedule::daemon(raw.daemon.as_ref().and_then(|d| d.listen.as_deref()))?;
        if let Some(a) = raw.archive {
            c.archive = archive(a)?;
        }
        if let Some(e) = raw.encryption {
            c.encryption = encryption(e)?;
        }
        let selection = merge_selection(Selection::default(), raw.selection.as_ref())?;
        let quiesce = merge_quiesce(Quiesce::default(), raw.quiesce.as_ref())?;
        let retention = merge_retention(Retention::default(), raw.retention.as_ref())?;
        let hooks = merge_hooks(Hooks::default(), raw.hooks.as_ref(), "hooks")?;
        for (name, t) in raw.target {
            let target = Target::from_raw(name, t, &retention)?;
            c.targets.insert(target.name.clone(), target);
        }
        // The top level as a job: with no [job.*] it is the implicit `default` job, writing to every target.
        let base = Job {
            name: DEFAULT_JOB.into(),
            targets: c.targets.keys().cloned().collect(),
            selection,
            quiesce,
            prune: prunes_by_default(&retention, c.targets.values()),
            retention,
            healthcheck_url: None,
            hooks,
            schedule: None,
        };
        c.notify = raw
            .notify
            .into_iter()
            .enumerate()
            .map(|(i, n)| notify::notify(i, n))
            .collect::<Result<_, _>>()?;
        c.jobs = if raw.job.is_empty() {
            let mut base = base;
            base.healthcheck_url = raw
                .healthcheck_url
                .as_deref()
                .map(|u| notify::healthcheck_url("healthcheck-url", u))
                .transpose()?;
            BTreeMap::from([(base.name.clone(), base)])
        } else {
            if raw.healthcheck_url.is_some() {
                // One check per job: a shared URL would mix the runs of every job into one check.
                return Err(ConfigError::Invalid(
                    "healthcheck-url: with [job.*] tables, set it in each [job.NAME] (one check per job)"
                        .into(),
                ));
            }
            raw.job
                .into_iter()
                .map(|(name, j)| Ok((name.clone(), job(name, j, &c.targets, &base)?)))
                .collect::<Result<_, ConfigError>>()?
        };
        Ok(c)
    }

    /// The job named `name`, or the only/default one when `None`.
    pub fn job(&self, name: Option<&str>) -> Result<&Job, ConfigError> {
        match name {
            Some(n) => self.jobs.get(n).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "no job `{n}` in the config (known: {})",
                    known(self.jobs.keys())
                ))
            }),
            None => {
                if let Some(j) = self.jobs.get(DEFAULT_JOB) {
                    return Ok(j);
                }
                if self.jobs.len() == 1 {
                    return Ok(self.jobs.values().next().expect("one job"));
                }
                Err(ConfigError::Invalid(format!(
                    "several jobs are configured; pick one with --job (known: {})",
                    known(self.jobs.keys())
                )))
            }
        }
    }
}

fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn check_name(what: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ConfigError::Invalid(format!(
            "{what} name `{name}`: use letters, digits, `-` and `_` only"
        )));
    }
    Ok(())
}

/// `[archive]` over the defaults.
fn archive(a: RawArchive) -> Result<Archive, ConfigError> {
    let mut archive = Archive::default();
    if let Some(l) = a.zstd_level {
        if !(1..=22).contains(&l) {
            return Err(ConfigError::Invalid(format!(
                "archive.zstd-level = {l}: must be between 1 and 22"
            )));
        }
        archive.zstd_level = l;
    }
    if let Some(t) = a.zstd_threads {
        archive.zstd_threads = t;
    }
    Ok(archive)
}

/// `[encryption]`: recipients (inline and from `recipients-file`) or a passphrase file, not both.
fn encryption(e: RawEncryption) -> Result<Encryption, ConfigError> {
    let mut recipients = e.recipients.unwrap_or_default();
    if let Some(f) = e.recipients_file {
        let text = std::fs::read_to_string(&f).map_err(|source| ConfigError::Read {
            path: f.clone(),
            source,
        })?;
        recipients.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    if !recipients.is_empty() && e.passphrase_file.is_some() {
        return Err(ConfigError::Invalid(
            "encryption: set either recipients or passphrase-file, not both".into(),
        ));
    }
    Ok(Encryption {
        recipients,
        passphrase_file: e.passphrase_file,
    })
}

/// Whether a job prunes after its backups when its config does not say: when a retention policy applies to any of
/// its targets (the job's own, or a target's `[target.NAME.retention]` keys over it).
fn prunes_by_default<'a>(
    retention: &Retention,
    mut targets: impl Iterator<Item = &'a Target>,
) -> bool {
    !retention.policy.is_empty()
        || targets.any(|t| !t.effective_retention(retention).policy.is_empty())
}

/// A `[job.NAME]` table over `base` (the top-level sections); its targets must be configured ones.
fn job(
    name: String,
    j: RawJob,
    targets: &BTreeMap<String, Target>,
    base: &Job,
) -> Result<Job, ConfigError> {
    check_name("job", &name)?;
    let job_targets = j.targets.unwrap_or_else(|| base.targets.clone());
    for t in &job_targets {
        if !targets.contains_key(t) {
            return Err(ConfigError::Invalid(format!(
                "job.{name}.targets names `{t}`, but there is no [target.{t}] (known: {})",
                known(targets.keys())
            )));
        }
    }
    let retention = merge_retention(base.retention.clone(), j.retention.as_ref())?;
    let healthcheck_url = j
        .healthcheck_url
        .as_deref()
        .map(|u| notify::healthcheck_url(&format!("job.{name}.healthcheck-url"), u))
        .transpose()?;
    let schedule = schedule::job_schedule(
        &name,
        j.schedule.as_deref(),
        j.timezone.as_deref(),
        j.jitter.as_deref(),
        j.max_age.as_deref(),
    )?;
    let prune = j.prune.unwrap_or_else(|| {
        prunes_by_default(
            &retention,
            job_targets.iter().filter_map(|t| targets.get(t)),
        )
    });
    Ok(Job {
        healthcheck_url,
        schedule,
        targets: job_targets,
        selection: merge_selection(base.selection.clone(), j.selection.as_ref())?,
        quiesce: merge_quiesce(base.quiesce.clone(), j.quiesce.as_ref())?,
        prune,
        retention,
        hooks: merge_hooks(
            base.hooks.clone(),
            j.hooks.as_ref(),
            &format!("job.{name}.hooks"),
        )?,
        name,
    })
}

fn merge_selection(mut s: Selection, raw: Option<&RawSelection>) -> Result<Selection, ConfigError> {
    if let Some(r) = raw {
        if let Some(v) = &r.include {
            s.include = v.clone();
        }
        if let Some(v) = &r.exclude {
            s.exclude = v.clone();
        }
        if let Some(v) = r.bind_mounts {
            s.bind_mounts = v;
        }
        if let Some(v) = &r.include_binds {
            s.include_binds = v.clone();
        }
        if let Some(v) = &r.exclude_binds {
            s.exclude_binds = v.clone();
        }
    }
    for p in s
        .include
        .iter()
        .chain(&s.exclude)
        .chain(&s.include_binds)
        .chain(&s.exclude_binds)
    {
        globset::Glob::new(p)
            .map_err(|e| ConfigError::Invalid(format!("selection pattern `{p}`: {e}")))?;
    }
    Ok(s)
}

fn merge_quiesce(mut q: Quiesce, raw: Option<&RawQuiesce>) -> Result<Quiesce, ConfigError> {
    if let Some(r) = raw {
        if let Some(d) = &r.default {
            q.default = d
                .parse()
                .map_err(|m| ConfigError::Invalid(format!("quiesce.default: {m}")))?;
        }
        if let Some(t) = &r.stop_timeout {
            q.stop_timeout = parse_duration(t)
                .map_err(|m| ConfigError::Invalid(format!("quiesce.stop-timeout: {m}")))?;
        }
        if let Some(t) = &r.max_downtime {
            q.max_downtime = parse_duration(t)
                .map_err(|m| ConfigError::Invalid(format!("quiesce.max-downtime: {m}")))?;
            if q.max_downtime.is_zero() {
                return Err(ConfigError::Invalid(
                    "quiesce.max-downtime must be more than 0s".into(),
                ));
            }
        }
        if let Some(g) = r.group_by_project {
            q.group_by_project = g;
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = Config::parse("[quiesce]\ndefualt = \"pause\"\n").unwrap_err();
        assert!(e.to_string().contains("defualt"), "{e}");
        let e = Config::parse("colour = 1\n").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn docker_data_path_and_helper_image() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.data_path, DataPath::Auto);
        assert_eq!(c.helper_image, None);
        let c =
            Config::parse("[docker]\ndata-path = \"Engine\"\nhelper-image = \"voltar:0.1.0\"\n")
                .unwrap();
        assert_eq!(c.data_path, DataPath::Engine);
        assert_eq!(c.helper_image.as_deref(), Some("voltar:0.1.0"));
        let c = Config::parse("[docker]\nmirror-image = \"voltar:0.1.0\"\n").unwrap();
        assert_eq!(c.mirror_image.as_deref(), Some("voltar:0.1.0"));
        let e = Config::parse("[docker]\ndata-path = \"nfs\"\n").unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("[docker] data-path") && e.contains("`nfs`"),
            "{e}"
        );
        assert!(e.contains("auto, host or engine"), "{e}");
    }

    /// A retention policy set only on a target prunes that target after each backup, as a top-level one does
    /// (it used to apply only to `voltar prune`, so such a target grew for ever); `prune = false` still wins.
    #[test]
    fn a_target_retention_alone_turns_pruning_on() {
        let target =
            "[target.local]\ntype = \"local\"\npath = \"/b\"\nretention = { keep-last = 1 }\n";
        let c = Config::parse(target).unwrap();
        assert!(c.job(None).unwrap().prune);
        let c = Config::parse(&format!("{target}[job.n]\ntargets = [\"local\"]\n")).unwrap();
        assert!(c.job(Some("n")).unwrap().prune);
        let c = Config::parse(&format!(
            "{target}[job.n]\ntargets = [\"local\"]\nprune = false\n"
        ))
        .unwrap();
        assert!(!c.job(Some("n")).unwrap().prune);
        let c = Config::parse("[target.local]\ntype = \"local\"\npath = \"/b\"\n").unwrap();
        assert!(
            !c.job(None).unwrap().prune,
            "no policy anywhere: nothing to prune"
        );
    }

    #[test]
    fn example_config_parses_and_means_what_it_says() {
        let c = Config::parse(include_str!("../../config.example.toml")).unwrap();
        let j = c.job(Some("nightly")).unwrap();
        assert_eq!(j.targets, vec!["local", "offsite"]);
        assert!(j.prune);
        assert_eq!(j.retention.policy.keep_daily, Some(7));
        assert_eq!(j.quiesce.stop_timeout, Duration::from_secs(30));
        assert_eq!(j.quiesce.max_downtime, DEFAULT_MAX_DOWNTIME);
        assert_eq!(c.spool_dir(), PathBuf::from("/var/lib/voltar/spool"));
        match &c.targets["offsite"].kind {
            TargetKind::S3(s) => assert_eq!(
                (s.bucket.as_str(), s.prefix.as_str()),
                ("my-backups", "voltar/host1")
            ),
            other => panic!("offsite is {other:?}"),
        }
        assert!(c.job(None).is_ok(), "a single job is picked without --job");
        let s = j.schedule.as_ref().expect("the example schedules nightly");
        assert_eq!(s.expr, "15 3 * * *");
        assert_eq!(s.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(s.jitter, Duration::from_secs(600));
        assert_eq!(s.max_age, Some(Duration::from_secs(26 * 3600)));
        assert_eq!(c.daemon.listen, Some("127.0.0.1:9799".parse().unwrap()));
        assert_eq!(j.hooks.timeout, DEFAULT_HOOK_TIMEOUT);
        assert_eq!(j.hooks.before, None);
        assert!(j.hooks.containers.is_empty());
        assert_eq!(
            j.healthcheck_url
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("https://hc-ping.com/5bf6…")
        );
        let kinds: Vec<_> = c.notify.iter().map(|n| (&n.kind, n.on)).collect();
        assert!(
            matches!(
                kinds.as_slice(),
                [
                    (
                        NotifyKind::Webhook,
                        NotifyOn {
                            failure: true,
                            success: false
                        }
                    ),
                    (
                        NotifyKind::Ntfy,
                        NotifyOn {
                            failure: true,
                            success: true
                        }
                    ),
                    (
                        NotifyKind::Email(Smtp {
                            port: 587,
                            tls: SmtpTls::StartTls,
                            ..
                        }),
                        NotifyOn {
                            failure: true,
                            success: false
                        }
                    ),
                ]
            ),
            "{kinds:?}"
        );
        assert_eq!(
            c.notify[1].url.expose().as_str(),
            "https://ntfy.sh/my-backups-4f7a"
        );
    }

    /// A top-level healthcheck-url belongs to the implicit default job; with [job.*] tables it goes in each.
    #[test]
    fn healthcheck_url_is_per_job() {
        let c = Config::parse("healthcheck-url = \"https://hc.example/ping/abc\"\n").unwrap();
        assert!(c.job(None).unwrap().healthcheck_url.is_some());
        let e = Config::parse("healthcheck-url = \"https://hc.example/ping/abc\"\n[job.a]\n")
            .unwrap_err();
        assert!(e.to_string().contains("[job.NAME]"), "{e}");
        let c =
            Config::parse("[job.a]\nhealthcheck-url = \"https://hc.example/ping/abc\"\n[job.b]\n")
                .unwrap();
        assert!(c.job(Some("a")).unwrap().healthcheck_url.is_some());
        assert!(c.job(Some("b")).unwrap().healthcheck_url.is_none());
    }

    #[test]
    fn empty_config_is_the_default() {
        let c = Config::parse("").unwrap();
        let j = c.job(None).unwrap();
        assert_eq!(j.selection.include, vec!["*"]);
        assert_eq!(j.quiesce.default, QuiesceAction::None);
        assert_eq!(c.archive.zstd_level, 3);
    }

    #[test]
    fn spool_dir_max_downtime_and_check_timeout() {
        let c = Config::parse(
            "state-dir = \"/st\"\n[quiesce]\nmax-downtime = \"90s\"\n[target.s]\ntype = \"s3\"\nbucket = \"b\"\ncheck-timeout = \"12s\"\n[job.a]\n[job.a.quiesce]\nmax-downtime = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(c.spool_dir(), PathBuf::from("/st/spool"));
        assert_eq!(
            c.job(Some("a")).unwrap().quiesce.max_downtime,
            Duration::from_secs(120)
        );
        assert_eq!(c.targets["s"].check_timeout(), Duration::from_secs(12));
        let c = Config::parse("spool-dir = \"/fast/spool\"\n").unwrap();
        assert_eq!(c.spool_dir(), PathBuf::from("/fast/spool"));
        assert_eq!(
            c.job(None).unwrap().quiesce.max_downtime,
            Duration::from_secs(600)
        );
        for bad in [
            "[quiesce]\nmax-downtime = \"0s\"\n",
            "[quiesce]\nmax-downtime = \"soon\"\n",
            "[target.l]\ntype = \"local\"\npath = \"/b\"\ncheck-timeout = \"5s\"\n",
            "[target.s]\ntype = \"s3\"\nbucket = \"b\"\ncheck-timeout = \"0s\"\n",
        ] {
            let e = Config::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("max-downtime") || e.contains("check-timeout"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn schedules_are_checked_at_load_naming_the_job_and_key() {
        let c = Config::parse(
            "[daemon]\nlisten = \"127.0.0.1:9800\"\n[job.n]\nschedule = \"15 3 * * *\"\ntimezone = \"Europe/Berlin\"\njitter = \"10m\"\nmax-age = \"26h\"\n[job.s]\nschedule = \"*/2 * * * * *\"\n[job.w]\nschedule = \"@weekly\"\n[job.once]\n",
        )
        .unwrap();
        assert_eq!(c.daemon.listen, Some("127.0.0.1:9800".parse().unwrap()));
        let n = c.jobs["n"].schedule.as_ref().unwrap();
        assert_eq!(n.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(n.zone_from, ZoneFrom::Config);
        assert_eq!(n.jitter, Duration::from_secs(600));
        assert_eq!(n.max_age, Some(Duration::from_secs(26 * 3600)));
        let s = c.jobs["s"].schedule.as_ref().unwrap();
        assert_eq!((s.jitter, s.max_age), (Duration::ZERO, None));
        assert_ne!(s.zone_from, ZoneFrom::Config, "no timezone: the machine's");
        assert!(c.jobs["w"].schedule.is_some());
        assert!(c.jobs["once"].schedule.is_none());
        assert_eq!(
            Config::parse("[daemon]\nlisten = \"\"\n")
                .unwrap()
                .daemon
                .listen,
            None
        );
        assert_eq!(
            Config::parse("").unwrap().daemon.listen,
            Some(DEFAULT_LISTEN.parse().unwrap())
        );
        for (bad, names) in [
            (
                "[job.n]\nschedule = \"61 * * * *\"\n",
                &["job.n.schedule", "e.g."][..],
            ),
            (
                "[job.n]\nschedule = \"every day\"\n",
                &["job.n.schedule", "15 3 * * *"],
            ),
            (
                "[job.n]\nschedule = \"0 0 31 2 *\"\n",
                &["job.n.schedule", "never"],
            ),
            (
                "[job.n]\nschedule = \"@daily\"\ntimezone = \"Mars/Olympus\"\n",
                &["job.n.timezone", "Europe/Berlin"],
            ),
            (
                "[job.n]\nschedule = \"@daily\"\njitter = \"soon\"\n",
                &["job.n.jitter"],
            ),
            (
                "[job.n]\nschedule = \"@daily\"\nmax-age = \"0s\"\n",
                &["job.n.max-age"],
            ),
            (
                "[job.n]\nmax-age = \"1d\"\n",
                &["job.n.max-age", "no schedule"],
            ),
            (
                "[daemon]\nlisten = \"localhost\"\n",
                &["daemon.listen", "127.0.0.1:9799"],
            ),
            ("[daemon]\nport = 1\n", &["port"]),
        ] {
            let e = Config::parse(bad).unwrap_err().to_string();
            for n in names {
                assert!(e.contains(n), "{bad}: `{e}` does not say {n}");
            }
            assert!(!e.contains("Component error") && !e.contains(".;"), "{e}");
        }
    }

    #[test]
    fn job_naming_an_unknown_target_is_an_error() {
        let e = Config::parse("[job.nightly]\ntargets = [\"nas\"]\n").unwrap_err();
        assert!(e.to_string().contains("nas"), "{e}");
    }
}
