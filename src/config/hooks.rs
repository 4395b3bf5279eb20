//! Hook settings: the commands a job runs on the host around a run (`before`, `after`, `on-failure`) and inside
//! containers around the read of their sources (`pre-backup`, `post-backup`). The container keys are the same in
//! config (`[hooks.container."NAME"]`, per job `[job.X.hooks.container."NAME"]`) and as container labels
//! (`voltar.pre-backup`, …); the labels are read by `hooks` at plan time, which decides which one counts.
//!
//! A container command is a string (run as `sh -c STRING`) or a JSON array / TOML array (run as argv, without a
//! shell, for images that have none).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{parse_duration, ConfigError};

/// Default of `hook-timeout` (container hooks) and `[hooks] timeout` (host hooks).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// A command run inside a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HookCommand {
    /// Run as `sh -c STRING` (the image needs a shell at `sh` in its `PATH`).
    Shell(String),
    /// Run as given, no shell.
    Argv(Vec<String>),
}

impl HookCommand {
    /// The text of a label or config value: a JSON array of strings is argv, anything else a shell command.
    pub fn parse(text: &str) -> Result<HookCommand, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("the command is empty".into());
        }
        if t.starts_with('[') {
            let argv: Vec<String> = serde_json::from_str(t).map_err(|e| {
                format!("`{t}` starts with `[` but is not a JSON array of strings ({e})")
            })?;
            return HookCommand::argv(argv);
        }
        Ok(HookCommand::Shell(t.to_string()))
    }

    /// An argv command; it must name a program.
    pub fn argv(argv: Vec<String>) -> Result<HookCommand, String> {
        if argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err("the command array is empty".into());
        }
        Ok(HookCommand::Argv(argv))
    }

    /// What the engine is asked to run.
    pub fn to_argv(&self) -> Vec<String> {
        match self {
            HookCommand::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
            HookCommand::Argv(v) => v.clone(),
        }
    }
}

impl fmt::Display for HookCommand {
    /// The shell string as written, or the argv as a JSON array (as the label would be written).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookCommand::Shell(s) => f.write_str(s),
            HookCommand::Argv(v) => {
                f.write_str(&serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}")))
            }
        }
    }
}

/// What a failing container pre-backup hook (non-zero exit, timeout) means for its source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// The source fails: it is not read, nothing is stored for it.
    #[default]
    Fail,
    /// A warning; the source is read anyway.
    Continue,
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnError::Fail => "fail",
            OnError::Continue => "continue",
        })
    }
}

impl FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fail" => Ok(OnError::Fail),
            "continue" => Ok(OnError::Continue),
            other => Err(format!(
                "`{other}` is not a hook error mode (use fail or continue)"
            )),
        }
    }
}

/// The hooks of one container as the config names them (every key optional: labels and defaults fill in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerHookConfig {
    pub pre_backup: Option<HookCommand>,
    pub post_backup: Option<HookCommand>,
    pub user: Option<String>,
    pub timeout: Option<Duration>,
    pub on_error: Option<OnError>,
}

/// A job's hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hooks {
    /// Host commands (`sh -c`), run before the run touches anything; a failure aborts the run (exit 2).
    pub before: Option<String>,
    /// Host command run after every run that started (the result is in `VOLTAR_RESULT`).
    pub after: Option<String>,
    /// Host command run after a run whose result is not `ok`.
    pub on_failure: Option<String>,
    /// Limit of each host command.
    pub timeout: Duration,
    /// Container name → its hooks.
    pub containers: BTreeMap<String, ContainerHookConfig>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            before: None,
            after: None,
            on_failure: None,
            timeout: DEFAULT_HOOK_TIMEOUT,
            containers: BTreeMap::new(),
        }
    }
}

/// `[hooks]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHooks {
    pub before: Option<String>,
    pub after: Option<String>,
    pub on_failure: Option<String>,
    pub timeout: Option<String>,
    #[serde(default)]
    pub container: BTreeMap<String, RawContainerHooks>,
}

/// `[hooks.container."NAME"]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawContainerHooks {
    pub pre_backup: Option<RawCommand>,
    pub post_backup: Option<RawCommand>,
    pub hook_user: Option<String>,
    pub hook_timeout: Option<String>,
    pub hook_on_error: Option<String>,
}

/// A command as TOML writes it: a string (`sh -c`) or an array (argv).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawCommand {
    Shell(String),
    Argv(Vec<String>),
}

/// `[hooks]` (top level or a job's) over `base`: keys given replace the base's; a container table given for a
/// name replaces the base's table for that name.
pub fn merge_hooks(mut h: Hooks, raw: Option<&RawHooks>, at: &str) -> Result<Hooks, ConfigError> {
    let Some(r) = raw else { return Ok(h) };
    let host = |v: &Option<String>, key: &str| -> Result<Option<String>, ConfigError> {
        match v {
            Some(s) if s.trim().is_empty() => Err(ConfigError::Invalid(format!(
                "{at}.{key}: the command is empty (remove the key to run nothing)"
            ))),
            other => Ok(other.clone()),
        }
    };
    if r.before.is_some() {
        h.before = host(&r.before, "before")?;
    }
    if r.after.is_some() {
        h.after = host(&r.after, "after")?;
    }
    if r.on_failure.is_some() {
        h.on_failure = host(&r.on_failure, "on-failure")?;
    }
    if let Some(t) = &r.timeout {
        h.timeout = positive(t, &format!("{at}.timeout"))?;
    }
    for (name, c) in &r.container {
        let key = format!("{at}.container.\"{name}\"");
        let cmd = |c: &Option<RawCommand>, k: &str| -> Result<Option<HookCommand>, ConfigError> {
            c.as_ref()
                .map(|c| match c {
                    RawCommand::Shell(s) => HookCommand::parse(s),
                    RawCommand::Argv(v) => HookCommand::argv(v.clone()),
                })
                .transpose()
                .map_err(|m| ConfigError::Invalid(format!("{key}.{k}: {m}")))
        };
        let cfg = ContainerHookConfig {
            pre_backup: cmd(&c.pre_backup, "pre-backup")?,
            post_backup: cmd(&c.post_backup, "post-backup")?,
            user: c.hook_user.clone().filter(|u| !u.trim().is_empty()),
            timeout: c
                .hook_timeout
                .as_ref()
                .map(|t| positive(t, &format!("{key}.hook-timeout")))
                .transpose()?,
            on_error: c
                .hook_on_error
                .as_ref()
                .map(|m| {
                    m.parse()
                        .map_err(|m| ConfigError::Invalid(format!("{key}.hook-on-error: {m}")))
                })
                .transpose()?,
        };
        h.containers.insert(name.clone(), cfg);
    }
    Ok(h)
}

/// A duration above zero, else a message naming `key`.
fn positive(t: &str, key: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(t).map_err(|m| ConfigError::Invalid(format!("{key}: {m}")))?;
    if d.is_zero() {
        return Err(ConfigError::Invalid(format!("{key} must be more than 0s")));
    }
    Ok(d)
}
