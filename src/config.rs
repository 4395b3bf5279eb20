//! Configuration in two stages: raw serde structs that mirror the TOML file exactly (`deny_unknown_fields`,
//! kebab-case, so a typo is an error naming the key), then a validated [`Config`] the rest of the crate uses.
//! CLI flags are a separate type (`cli`) applied on top. Secrets are read from `*_file` keys or the environment,
//! never stored in the TOML itself; a secrets file readable by group or others is refused.
//!
//! With no config file at all, [`Config::default`] is a usable configuration: one job `default`, all named
//! volumes, quiesce `none`, no targets (so `--target` is needed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::QuiesceAction;
use crate::retention::Policy;

/// Where the config is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATHS: &[&str] = &["/etc/voltar/config.toml", "voltar.toml"];

// ---------------------------------------------------------------------------------------------------------------
// Raw: exactly the file.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    pub state_dir: Option<PathBuf>,
    pub spool_dir: Option<PathBuf>,
    pub docker: Option<RawDocker>,
    pub selection: Option<RawSelection>,
    pub quiesce: Option<RawQuiesce>,
    pub archive: Option<RawArchive>,
    pub encryption: Option<RawEncryption>,
    pub retention: Option<RawRetention>,
    #[serde(default)]
    pub target: BTreeMap<String, RawTarget>,
    #[serde(default)]
    pub job: BTreeMap<String, RawJob>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDocker {
    pub host: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSelection {
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub bind_mounts: Option<bool>,
    pub include_binds: Option<Vec<String>>,
    pub exclude_binds: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawQuiesce {
    pub default: Option<String>,
    pub stop_timeout: Option<String>,
    pub max_downtime: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawArchive {
    pub zstd_level: Option<i32>,
    pub zstd_threads: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawEncryption {
    pub recipients: Option<Vec<String>>,
    pub recipients_file: Option<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRetention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<String>,
    pub timezone: Option<String>,
    pub pre_restore_keep_last: Option<u32>,
    pub pre_restore_keep_within: Option<String>,
    pub incomplete_grace: Option<String>,
    pub max_shrink: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTarget {
    #[serde(rename = "type")]
    pub kind: String,
    // local
    pub path: Option<PathBuf>,
    // both
    pub prefix: Option<String>,
    // s3
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: Option<bool>,
    pub profile: Option<String>,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    pub storage_class: Option<String>,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub checksum: Option<String>,
    pub part_size: Option<String>,
    pub max_parts: Option<u32>,
    pub parallel_parts: Option<u32>,
    pub retry_deadline: Option<String>,
    pub check_timeout: Option<String>,
    pub retention: Option<RawRetention>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawJob {
    pub targets: Option<Vec<String>>,
    pub selection: Option<RawSelection>,
    pub quiesce: Option<RawQuiesce>,
    pub retention: Option<RawRetention>,
    pub prune: Option<bool>,
}

// ---------------------------------------------------------------------------------------------------------------
// Validated.

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
}

/// Default of `[quiesce] max-downtime`.
pub const DEFAULT_MAX_DOWNTIME: Duration = Duration::from_secs(600);

impl Default for Quiesce {
    fn default() -> Self {
        Quiesce {
            default: QuiesceAction::None,
            stop_timeout: Duration::from_secs(30),
            max_downtime: DEFAULT_MAX_DOWNTIME,
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

/// Retention settings: the policy plus the knobs around it.
#[derive(Clone, Debug)]
pub struct Retention {
    pub policy: Policy,
    pub timezone: Option<chrono_tz::Tz>,
    pub pre_restore_keep_last: u32,
    pub pre_restore_keep_within: Duration,
    /// Incomplete backups (no manifest) older than this are removed by prune.
    pub incomplete_grace: Duration,
    /// Skip pruning when the new backup's size dropped by more than this fraction versus the previous one.
    pub max_shrink: f64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            policy: Policy::default(),
            timezone: None,
            pre_restore_keep_last: 3,
            pre_restore_keep_within: Duration::from_secs(7 * 86400),
            incomplete_grace: Duration::from_secs(86400),
            max_shrink: 0.5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChecksumMode {
    /// The SDK default (checksums on every request).
    Default,
    /// Only when the operation requires one: for stores that reject the SDK's default checksums.
    WhenRequired,
}

#[derive(Clone, Debug)]
pub struct S3Target {
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub profile: Option<String>,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    pub storage_class: Option<String>,
    /// `AES256` or `aws:kms`.
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub checksum: ChecksumMode,
    /// Minimum part size in bytes (grows automatically).
    pub part_size: u64,
    /// Provider's part count limit.
    pub max_parts: u32,
    /// Parts uploaded concurrently.
    pub parallel_parts: u32,
    /// Overall deadline for retrying one request.
    pub retry_deadline: Duration,
    /// Budget of the check made before a backup quiesces anything (see `Storage::check`).
    pub check_timeout: Duration,
}

impl S3Target {
    pub fn new(bucket: String, prefix: String) -> S3Target {
        S3Target {
            bucket,
            prefix,
            region: None,
            endpoint: None,
            path_style: false,
            profile: None,
            access_key_id_file: None,
            secret_access_key_file: None,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            checksum: ChecksumMode::Default,
            part_size: 8 << 20,
            max_parts: 10_000,
            parallel_parts: 2,
            retry_deadline: Duration::from_secs(300),
            check_timeout: crate::storage::CHECK_TIMEOUT,
        }
    }
}

// Few of these exist, once per target: size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum TargetKind {
    /// Root directory = path/prefix.
    Local {
        path: PathBuf,
        prefix: String,
    },
    S3(S3Target),
}

#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    /// Per-target retention keys, merged over the job's policy when used (validated at load).
    pub retention: Option<RawRetention>,
}

impl Target {
    /// Budget of the check made before a backup quiesces anything (`check-timeout`, S3 targets only).
    pub fn check_timeout(&self) -> Duration {
        match &self.kind {
            TargetKind::S3(s) => s.check_timeout,
            TargetKind::Local { .. } => crate::storage::CHECK_TIMEOUT,
        }
    }

    /// The retention settings for this target under `job`: the job's, with this target's keys on top.
    pub fn effective_retention(&self, job: &Retention) -> Retention {
        merge_retention(job.clone(), self.retention.as_ref()).unwrap_or_else(|_| job.clone())
    }

    /// Parse a `--target` value: `s3://bucket/prefix`, `file:///dir` or a directory path.
    pub fn from_url(url: &str) -> Result<Target, ConfigError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "target `{url}` has no bucket (use s3://bucket/prefix)"
                )));
            }
            let mut t = S3Target::new(bucket.to_string(), prefix.trim_matches('/').to_string());
            // The AWS CLI honours these; so do we.
            t.endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                .ok();
            t.path_style = t.endpoint.is_some();
            return Ok(Target {
                name: url.to_string(),
                kind: TargetKind::S3(t),
                retention: None,
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(ConfigError::Invalid(format!(
                "target `{url}`: unsupported scheme (use a directory path, file:///dir or s3://bucket/prefix)"
            )));
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if path.is_empty() {
            return Err(ConfigError::Invalid("empty --target".into()));
        }
        Ok(Target {
            name: url.to_string(),
            kind: TargetKind::Local {
                path: PathBuf::from(path),
                prefix: String::new(),
            },
            retention: None,
        })
    }
}

/// Whether a `--target` value is a bare word: no path separator and no scheme. Only an existing directory or a
/// configured target's name may be given that way; everything else must say it is a path.
fn is_bare_word(arg: &str) -> bool {
    !arg.contains('/') && !arg.contains("://")
}

/// The configured name closest to `arg`, for "did you mean" hints: within 1 edit for names of up to 3 chars,
/// else within a third of the length (at least 2, so a swapped pair of letters is found).
fn closest<'a>(arg: &str, names: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    let len = arg.chars().count();
    let limit = if len <= 3 { 1 } else { (len / 3).max(2) };
    names
        .map(|n| (edit_distance(arg, n), n))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.as_str())
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
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
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Where the crash journal and locks live.
    pub state_dir: PathBuf,
    /// Where a backup spools the stream of a target that falls behind while containers are held; `None`:
    /// `<state_dir>/spool` (see [`Config::spool_dir`]).
    pub spool_dir: Option<PathBuf>,
    pub docker_host: Option<String>,
    pub archive: Archive,
    pub encryption: Encryption,
    pub targets: BTreeMap<String, Target>,
    pub jobs: BTreeMap<String, Job>,
    /// Path the config was read from, if any.
    pub source: Option<PathBuf>,
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
            },
        );
        Config {
            state_dir: default_state_dir(),
            spool_dir: None,
            docker_host: None,
            archive: Archive::default(),
            encryption: Encryption::default(),
            targets: BTreeMap::new(),
            jobs,
            source: None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VOLTAR_STATE_DIR") {
        return PathBuf::from(d);
    }
    // root: /var/lib/voltar; others: $XDG_STATE_HOME/voltar or ~/.local/state/voltar.
    if unsafe { libc::geteuid() } == 0 {
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
    let what = e.message().trim().replace('\n', " ");
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

    pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        if let Some(d) = raw.state_dir {
            c.state_dir = d;
        }
        c.spool_dir = raw.spool_dir;
        c.docker_host = raw.docker.and_then(|d| d.host);
        if let Some(a) = raw.archive {
            if let Some(l) = a.zstd_level {
                if !(1..=22).contains(&l) {
                    return Err(ConfigError::Invalid(format!(
                        "archive.zstd-level = {l}: must be between 1 and 22"
                    )));
                }
                c.archive.zstd_level = l;
            }
            if let Some(t) = a.zstd_threads {
                c.archive.zstd_threads = t;
            }
        }
        if let Some(e) = raw.encryption {
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
            c.encryption = Encryption {
                recipients,
                passphrase_file: e.passphrase_file,
            };
        }
        let base_selection = merge_selection(Selection::default(), raw.selection.as_ref())?;
        let base_quiesce = merge_quiesce(Quiesce::default(), raw.quiesce.as_ref())?;
        let base_retention = merge_retention(Retention::default(), raw.retention.as_ref())?;

        for (name, t) in raw.target {
            check_name("target", &name)?;
            // Validate now; merged over the job's policy when used.
            merge_retention(base_retention.clone(), t.retention.as_ref()).map_err(|e| {
                ConfigError::Invalid(format!(
                    "target.{name}.{}",
                    e.to_string().trim_start_matches("config: ")
                ))
            })?;
            let retention = t.retention.clone();
            let kind = target_kind(&name, t)?;
            c.targets.insert(
                name.clone(),
                Target {
                    name,
                    kind,
                    retention,
                },
            );
        }

        if raw.job.is_empty() {
            // No [job.*]: the top-level sections make up the implicit `default` job, writing to every target.
            let default = c.jobs.get_mut(DEFAULT_JOB).expect("default job");
            default.targets = c.targets.keys().cloned().collect();
            default.prune = !base_retention.policy.is_empty();
            default.selection = base_selection;
            default.quiesce = base_quiesce;
            default.retention = base_retention;
            return Ok(c);
        }
        c.jobs.clear();
        for (name, j) in raw.job {
            check_name("job", &name)?;
            let targets = j
                .targets
                .unwrap_or_else(|| c.targets.keys().cloned().collect());
            for t in &targets {
                if !c.targets.contains_key(t) {
                    return Err(ConfigError::Invalid(format!(
                        "job.{name}.targets names `{t}`, but there is no [target.{t}] (known: {})",
                        known(c.targets.keys())
                    )));
                }
            }
            let retention = merge_retention(base_retention.clone(), j.retention.as_ref())?;
            let job = Job {
                name: name.clone(),
                targets,
                selection: merge_selection(base_selection.clone(), j.selection.as_ref())?,
                quiesce: merge_quiesce(base_quiesce.clone(), j.quiesce.as_ref())?,
                prune: j.prune.unwrap_or(!retention.policy.is_empty()),
                retention,
            };
            c.jobs.insert(name, job);
        }
        Ok(c)
    }

    /// What one `--target` value means: the configured target of that name, else a URL or directory path
    /// ([`Target::from_url`]). A bare word (no `/`, no scheme) that is neither is an error naming the configured
    /// targets: `-t offsitee` must not quietly back up into a new `./offsitee` (issue 8). An existing directory
    /// of that name in the working directory is still accepted, as before.
    pub fn target_arg(&self, arg: &str) -> Result<Target, ConfigError> {
        if let Some(t) = self.targets.get(arg) {
            return Ok(t.clone());
        }
        if is_bare_word(arg) && !Path::new(arg).is_dir() {
            let hint = match closest(arg, self.targets.keys()) {
                Some(n) => format!("did you mean `{n}`? "),
                None => String::new(),
            };
            return Err(ConfigError::UnknownTarget {
                name: arg.to_string(),
                detail: format!(
                    "it is not a configured target ({hint}configured: {}) and no directory `{arg}` exists here; \
                     to write to a new local directory, say so: `./{arg}`, an absolute path or `file://{arg}`",
                    known(self.targets.keys())
                ),
            });
        }
        Target::from_url(arg)
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

fn target_kind(name: &str, t: RawTarget) -> Result<TargetKind, ConfigError> {
    let prefix = t
        .prefix
        .clone()
        .unwrap_or_default()
        .trim_matches('/')
        .to_string();
    if prefix.split('/').any(|c| c == "..") {
        return Err(ConfigError::Invalid(format!(
            "target.{name}.prefix must not contain `..`"
        )));
    }
    match t.kind.as_str() {
        "local" => {
            let path = t.path.ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "target.{name}: type = \"local\" needs path = \"/dir\""
                ))
            })?;
            for (k, set) in [
                ("bucket", t.bucket.is_some()),
                ("endpoint", t.endpoint.is_some()),
                ("region", t.region.is_some()),
                ("check-timeout", t.check_timeout.is_some()),
            ] {
                if set {
                    return Err(ConfigError::Invalid(format!(
                        "target.{name}.{k} only applies to type = \"s3\""
                    )));
                }
            }
            Ok(TargetKind::Local { path, prefix })
        }
        "s3" => {
            let bucket = t.bucket.ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "target.{name}: type = \"s3\" needs bucket = \"name\""
                ))
            })?;
            if t.path.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "target.{name}.path only applies to type = \"local\" (use bucket and prefix)"
                )));
            }
            let mut s = S3Target::new(bucket, prefix);
            s.region = t.region;
            s.endpoint = t
                .endpoint
                .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
            s.path_style = t.path_style.unwrap_or(false);
            s.profile = t.profile;
            s.access_key_id_file = t.access_key_id_file;
            s.secret_access_key_file = t.secret_access_key_file;
            if s.access_key_id_file.is_some() != s.secret_access_key_file.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "target.{name}: set both access-key-id-file and secret-access-key-file, or neither"
                )));
            }
            s.storage_class = t.storage_class;
            if let Some(sse) = &t.sse {
                if sse != "AES256" && sse != "aws:kms" {
                    return Err(ConfigError::Invalid(format!(
                        "target.{name}.sse = `{sse}`: use \"AES256\" or \"aws:kms\""
                    )));
                }
            }
            s.sse = t.sse;
            s.sse_kms_key_id = t.sse_kms_key_id;
            s.checksum = match t.checksum.as_deref() {
                None | Some("default") => ChecksumMode::Default,
                Some("when-required") => ChecksumMode::WhenRequired,
                Some(o) => {
                    return Err(ConfigError::Invalid(format!(
                        "target.{name}.checksum = `{o}`: use \"default\" or \"when-required\""
                    )))
                }
            };
            if let Some(p) = t.part_size {
                s.part_size = parse_size(&p)
                    .map_err(|m| ConfigError::Invalid(format!("target.{name}.part-size: {m}")))?;
                if s.part_size < 5 << 20 {
                    return Err(ConfigError::Invalid(format!(
                        "target.{name}.part-size must be at least 5MiB (the S3 minimum)"
                    )));
                }
            }
            if let Some(m) = t.max_parts {
                if !(1..=10_000).contains(&m) {
                    return Err(ConfigError::Invalid(format!(
                        "target.{name}.max-parts must be between 1 and 10000"
                    )));
                }
                s.max_parts = m;
            }
            if let Some(p) = t.parallel_parts {
                s.parallel_parts = p.clamp(1, 64);
            }
            if let Some(d) = t.retry_deadline {
                s.retry_deadline = parse_duration(&d).map_err(|m| {
                    ConfigError::Invalid(format!("target.{name}.retry-deadline: {m}"))
                })?;
            }
            if let Some(d) = t.check_timeout {
                s.check_timeout = parse_duration(&d).map_err(|m| {
                    ConfigError::Invalid(format!("target.{name}.check-timeout: {m}"))
                })?;
                if s.check_timeout.is_zero() {
                    return Err(ConfigError::Invalid(format!(
                        "target.{name}.check-timeout must be more than 0s"
                    )));
                }
            }
            Ok(TargetKind::S3(s))
        }
        other => Err(ConfigError::Invalid(format!(
            "target.{name}.type = `{other}`: use \"local\" or \"s3\""
        ))),
    }
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
    }
    Ok(q)
}

fn merge_retention(mut r: Retention, raw: Option<&RawRetention>) -> Result<Retention, ConfigError> {
    let Some(x) = raw else { return Ok(r) };
    let p = &mut r.policy;
    macro_rules! set {
        ($f:ident) => {
            if let Some(v) = x.$f {
                p.$f = Some(v);
            }
        };
    }
    set!(keep_last);
    set!(keep_hourly);
    set!(keep_daily);
    set!(keep_weekly);
    set!(keep_monthly);
    set!(keep_yearly);
    if let Some(w) = &x.keep_within {
        p.keep_within = Some(
            chrono::Duration::from_std(
                parse_duration(w)
                    .map_err(|m| ConfigError::Invalid(format!("retention.keep-within: {m}")))?,
            )
            .map_err(|e| ConfigError::Invalid(format!("retention.keep-within: {e}")))?,
        );
    }
    if let Some(tz) = &x.timezone {
        r.timezone = Some(tz.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "retention.timezone = `{tz}`: not an IANA time zone (e.g. Europe/Berlin, UTC)"
            ))
        })?);
    }
    if let Some(v) = x.pre_restore_keep_last {
        r.pre_restore_keep_last = v;
    }
    if let Some(w) = &x.pre_restore_keep_within {
        r.pre_restore_keep_within = parse_duration(w)
            .map_err(|m| ConfigError::Invalid(format!("retention.pre-restore-keep-within: {m}")))?;
    }
    if let Some(w) = &x.incomplete_grace {
        r.incomplete_grace = parse_duration(w)
            .map_err(|m| ConfigError::Invalid(format!("retention.incomplete-grace: {m}")))?;
    }
    if let Some(f) = x.max_shrink {
        if !(0.0..=1.0).contains(&f) {
            return Err(ConfigError::Invalid(
                "retention.max-shrink must be a fraction between 0 and 1".into(),
            ));
        }
        r.max_shrink = f;
    }
    Ok(r)
}

/// Parse a duration such as `30s`, `14d`, `2w`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    // humantime does not know weeks as `w`; expand `Nw` → `N*7d`.
    if let Some(n) = t.strip_suffix('w').and_then(|n| n.parse::<u64>().ok()) {
        return Ok(Duration::from_secs(n * 7 * 86400));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{s}` is not a duration ({e}); e.g. 30s, 10m, 14d"))
}

/// Parse a size such as `16MiB`, `64M`, `1GiB`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 16MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit (use KiB, MiB or GiB)")),
    };
    Ok(n * mult)
}

/// Read a secret from a file, refusing files readable by group or others.
pub fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::Secret {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConfigError::Secret {
            path: path.to_path_buf(),
            message: format!(
                "is readable by group or others (mode {:o}); run `chmod 600 {}`",
                meta.permissions().mode() & 0o777,
                path.display()
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
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
    fn example_config_parses_and_means_what_it_says() {
        let c = Config::parse(include_str!("../config.example.toml")).unwrap();
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
    fn job_naming_an_unknown_target_is_an_error() {
        let e = Config::parse("[job.nightly]\ntargets = [\"nas\"]\n").unwrap_err();
        assert!(e.to_string().contains("nas"), "{e}");
    }

    #[test]
    fn target_urls() {
        let t = Target::from_url("s3://bkt/a/b/").unwrap();
        match t.kind {
            TargetKind::S3(s) => {
                assert_eq!(s.bucket, "bkt");
                assert_eq!(s.prefix, "a/b");
            }
            _ => panic!("not s3"),
        }
        assert!(matches!(
            Target::from_url("./backups").unwrap().kind,
            TargetKind::Local { .. }
        ));
        assert!(Target::from_url("ftp://x").is_err());
    }

    #[test]
    fn a_bare_word_must_be_a_configured_target_or_an_existing_directory() {
        let c = Config::parse(
            "[target.offsite]\ntype = \"local\"\npath = \"/srv/o\"\n[target.local]\ntype = \"local\"\npath = \"/srv/l\"\n",
        )
        .unwrap();
        let e = c.target_arg("offsitee").unwrap_err().to_string();
        for want in [
            "unknown target `offsitee`",
            "did you mean `offsite`?",
            "configured: local, offsite",
            "`./offsitee`",
            "`file://offsitee`",
        ] {
            assert!(e.contains(want), "missing `{want}`: {e}");
        }
        let e = c.target_arg("zzz-nothing-alike").unwrap_err().to_string();
        assert!(!e.contains("did you mean"), "{e}");
        assert_eq!(c.target_arg("offsite").unwrap().name, "offsite");
        for ok in [
            "./new",
            "/abs/new",
            "file://new",
            "s3://b/p",
            "rel/new",
            ".",
        ] {
            assert!(c.target_arg(ok).is_ok(), "{ok}");
        }
        let none = Config::parse("").unwrap();
        let e = none.target_arg("backups-typo").unwrap_err().to_string();
        assert!(e.contains("configured: none"), "{e}");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("offsitee", "offsite"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            closest("lcoal", ["local".to_string()].iter()),
            Some("local")
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("5m").unwrap(), 5 << 20);
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(
            parse_duration("14d").unwrap(),
            Duration::from_secs(14 * 86400)
        );
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86400)
        );
        assert!(parse_duration("soon").is_err());
    }
}
