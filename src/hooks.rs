//! Hooks: commands run inside a container around the read of its source (`pre-backup`, `post-backup`), and on
//! the host around a whole run (`before`, `after`, `on-failure`).
//!
//! # Design
//!
//! * **Which setting counts, decided once at plan time** ([`resolve`], pure): per key, a `voltar.*` container
//!   label, else the offen/docker-volume-backup label that means the same (`docker-volume-backup.archive-pre`,
//!   `archive-post`, `archive-pre.user`, `archive-post.user`), else the job's `[hooks.container."NAME"]` table,
//!   else the default. Labels win over config as they do for `voltar.quiesce`: the label is next to the
//!   container it describes. Each command carries what decided it, which `voltar plan` shows. A setting that
//!   cannot be understood (a JSON array that is not one, a bad timeout) is not ignored: it is a `problem` that
//!   fails the source at run time, before anything is touched — a hook silently dropped would give a backup
//!   that looks consistent and is not.
//! * **offen's semantics kept.** offen runs its `archive-pre`/`archive-post` commands without a shell, split
//!   into words like a shell would (its docs tell users to write `/bin/sh -c '…'` for redirections), so those
//!   labels become argv here, split the same way. offen's `exec-label` (which of several offen instances runs a
//!   container's commands) has no counterpart: voltar runs the hooks of the containers that mount the sources a
//!   job backs up, whatever that label says.
//! * **Running** ([`run_container_hook`]) is one `docker::Engine::exec` with a timeout after which the hook's
//!   processes are killed (see `docker::exec` for what happens on a remote engine). The outcome is a
//!   [`HookRecord`] (command, never the environment; exit code; duration) for the report and the manifest, plus
//!   the hook's output for the log, capped. When hooks run relative to the quiesce is the caller's business
//!   (`backup/source.rs`): pre hooks before pause/stop (a paused container cannot exec), post hooks after the
//!   container is back, and always when its pre hook ran.
//! * **Host hooks** ([`run_host_hook`]) are `sh -c` on the host with the run's facts in `VOLTAR_*` variables,
//!   in their own process group so that a timeout kills everything they started.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::catalog::{HookOutcome, HookPhase, HookRecord};
use crate::config::{parse_duration, HookCommand, Hooks, OnError, DEFAULT_HOOK_TIMEOUT};
use crate::docker::{ContainerInfo, Engine, ExecEnd, ExecSpec, ExecStdout};

/// Container labels of voltar's own.
pub const LABEL_PRE_BACKUP: &str = "voltar.pre-backup";
pub const LABEL_POST_BACKUP: &str = "voltar.post-backup";
pub const LABEL_HOOK_USER: &str = "voltar.hook-user";
pub const LABEL_HOOK_TIMEOUT: &str = "voltar.hook-timeout";
pub const LABEL_HOOK_ON_ERROR: &str = "voltar.hook-on-error";

/// offen/docker-volume-backup's labels that voltar understands.
pub const OFFEN_ARCHIVE_PRE: &str = "docker-volume-backup.archive-pre";
pub const OFFEN_ARCHIVE_POST: &str = "docker-volume-backup.archive-post";
pub const OFFEN_ARCHIVE_PRE_USER: &str = "docker-volume-backup.archive-pre.user";
pub const OFFEN_ARCHIVE_POST_USER: &str = "docker-volume-backup.archive-post.user";
pub const OFFEN_STOP_DURING_BACKUP: &str = "docker-volume-backup.stop-during-backup";

/// A hook command as planned, with what decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlannedHook {
    #[serde(serialize_with = "as_text")]
    pub command: HookCommand,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `label voltar.pre-backup`, `label docker-volume-backup.archive-pre`, `config hooks.container."db"`.
    pub from: String,
}

fn as_text<S: serde::Serializer>(c: &HookCommand, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&c.to_string())
}

/// The hooks of one container, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ContainerHooks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_backup: Option<PlannedHook>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_backup: Option<PlannedHook>,
    #[serde(serialize_with = "secs")]
    pub timeout: Duration,
    pub on_error: OnError,
    /// A setting that could not be understood: the source fails before anything is touched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl ContainerHooks {
    /// The hook of `phase`.
    pub fn of(&self, phase: HookPhase) -> Option<&PlannedHook> {
        match phase {
            HookPhase::PreBackup => self.pre_backup.as_ref(),
            HookPhase::PostBackup => self.post_backup.as_ref(),
        }
    }
}

/// The hooks of container `c` from its labels and the job's `hooks` settings; `None` when it has none.
pub fn resolve(c: &ContainerInfo, hooks: &Hooks) -> Option<ContainerHooks> {
    let cfg = hooks.containers.get(&c.name);
    let cfg_from = format!("config hooks.container.\"{}\"", c.name);
    let label = |k: &str| c.labels.get(k).map(String::as_str);
    let mut problems: Vec<String> = Vec::new();

    let user = |own_user: &str| -> Option<String> {
        label(LABEL_HOOK_USER)
            .or_else(|| label(own_user))
            .map(str::to_string)
            .or_else(|| cfg.and_then(|c| c.user.clone()))
            .filter(|u| !u.trim().is_empty())
    };
    let mut command = |own: &str,
                       offen: &str,
                       offen_user: &str,
                       config: Option<&HookCommand>|
     -> Option<PlannedHook> {
        let (command, from) = if let Some(text) = label(own) {
            match HookCommand::parse(text) {
                Ok(c) => (c, format!("label {own}")),
                Err(e) => {
                    problems.push(format!("label {own}: {e}"));
                    return None;
                }
            }
        } else if let Some(text) = label(offen) {
            match shlex::split(text) {
                Some(words) if !words.is_empty() => {
                    (HookCommand::Argv(words), format!("label {offen}"))
                }
                _ => {
                    problems.push(format!(
                        "label {offen}: `{text}` is not a command (empty, or unbalanced quotes)"
                    ));
                    return None;
                }
            }
        } else if let Some(c) = config {
            (c.clone(), cfg_from.clone())
        } else {
            return None;
        };
        Some(PlannedHook {
            command,
            user: user(offen_user),
            from,
        })
    };
    let pre_backup = command(
        LABEL_PRE_BACKUP,
        OFFEN_ARCHIVE_PRE,
        OFFEN_ARCHIVE_PRE_USER,
        cfg.and_then(|c| c.pre_backup.as_ref()),
    );
    let post_backup = command(
        LABEL_POST_BACKUP,
        OFFEN_ARCHIVE_POST,
        OFFEN_ARCHIVE_POST_USER,
        cfg.and_then(|c| c.post_backup.as_ref()),
    );
    let timeout = match label(LABEL_HOOK_TIMEOUT) {
        Some(t) => match parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                problems.push(format!("label {LABEL_HOOK_TIMEOUT}: must be more than 0s"));
                DEFAULT_HOOK_TIMEOUT
            }
            Err(e) => {
                problems.push(format!("label {LABEL_HOOK_TIMEOUT}: {e}"));
                DEFAULT_HOOK_TIMEOUT
            }
        },
        None => cfg.and_then(|c| c.timeout).unwrap_or(DEFAULT_HOOK_TIMEOUT),
    };
    let on_error = match label(LABEL_HOOK_ON_ERROR) {
        Some(m) => m.parse().unwrap_or_else(|e| {
            problems.push(format!("label {LABEL_HOOK_ON_ERROR}: {e}"));
            OnError::Fail
        }),
        None => cfg.and_then(|c| c.on_error).unwrap_or_default(),
    };
    if pre_backup.is_none() && post_backup.is_none() && problems.is_empty() {
        return None;
    }
    Some(ContainerHooks {
        pre_backup,
        post_backup,
        timeout,
        on_error,
        problem: (!problems.is_empty()).then(|| {
            format!(
                "container {}: {} (fix the label or config; nothing was backed up for this source)",
                c.name,
                problems.join("; ")
            )
        }),
    })
}

/// Whether offen's `stop-during-backup` label asks for a stop (`true`; offen also accepts an instance name
/// there, which voltar does not know, so only true-ish values count).
pub fn offen_wants_stop(labels: &BTreeMap<String, String>) -> bool {
    labels.get(OFFEN_STOP_DURING_BACKUP).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on"
        )
    })
}

/// A hook that ran: its record, and what to say in the log (its output, capped).
#[derive(Clone, Debug)]
pub struct HookRun {
    pub record: HookRecord,
    /// Why it did not succeed (exit code, timeout, engine error), naming the hook; `None` when it succeeded.
    pub failure: Option<String>,
    /// stdout and stderr, capped (for the log only: they may hold anything).
    pub output: String,
}

/// Run the `phase` hook `hook` of container `name` (`id`) with `timeout`. `before_start` is told the exec's id
/// after the engine created it and before it starts (the run journals it, so `recover` can kill a hook a killed
/// run left running); when it refuses, the hook is not run.
pub async fn run_container_hook(
    engine: &Engine,
    (id, name): (&str, &str),
    phase: HookPhase,
    hook: &PlannedHook,
    timeout: Duration,
    cancel: &CancellationToken,
    before_start: &(dyn Fn(&str) -> Result<(), String> + Send + Sync),
) -> HookRun {
    let spec = ExecSpec {
        argv: hook.command.to_argv(),
        user: hook.user.clone(),
        env: vec![],
        timeout,
    };
    let started = Instant::now();
    let mut record = HookRecord {
        container: name.to_string(),
        phase,
        command: hook.command.to_string(),
        user: hook.user.clone(),
        outcome: HookOutcome::Error,
        exit_code: None,
        duration_ms: 0,
    };
    let what = format!("{phase} hook in container {name} (`{}`)", hook.command);
    let (failure, output) = match engine
        .exec_noted(id, &spec, ExecStdout::Capture, cancel, before_start)
        .await
    {
        Err(e) => (Some(format!("{what} could not be run: {e}")), String::new()),
        Ok(o) => {
            record.exit_code = o.exit_code;
            let mut output = o.stdout.text();
            let err = o.stderr.text();
            if !err.is_empty() {
                if !output.is_empty() {
                    output.push('\n');
                }
                output.push_str(&err);
            }
            let failure = match &o.end {
                ExecEnd::Exited if o.exit_code == Some(0) => {
                    record.outcome = HookOutcome::Ok;
                    None
                }
                ExecEnd::Exited => {
                    record.outcome = HookOutcome::Failed;
                    Some(match o.exit_code {
                        Some(c) => format!("{what} failed with exit code {c}"),
                        None => format!("{what} ended without an exit code"),
                    })
                }
                ExecEnd::TimedOut(k) => {
                    record.outcome = HookOutcome::TimedOut;
                    Some(format!(
                        "{what} timed out after {}: {k}",
                        humantime::format_duration(timeout)
                    ))
                }
                ExecEnd::Cancelled(k) => {
                    record.outcome = HookOutcome::Interrupted;
                    Some(format!("{what} was interrupted: {k}"))
                }
            };
            (failure, output)
        }
    };
    record.duration_ms = started.elapsed().as_millis() as u64;
    HookRun {
        record,
        failure,
        output,
    }
}

/// What a host hook did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostHookOutcome {
    Ok,
    /// Why not (exit code, signal, timeout, could not start), naming the hook.
    Failed(String),
}

/// Bytes of a host hook's output (stdout and stderr together) kept for the log.
const HOST_OUTPUT_CAP: usize = 64 * 1024;

/// Run a host hook `name` (`before`, `after`, `on-failure`): `sh -c command` with `env` added to voltar's own
/// environment, killed (its whole process group) after `timeout`. Its output is captured (capped) and given
/// back for the log: never onto voltar's stdout (which may be `--json`), and only into the log, so that
/// `--quiet` stays silent when all went well.
pub async fn run_host_hook(
    name: &str,
    command: &str,
    env: &[(String, String)],
    timeout: Duration,
) -> (HostHookOutcome, String) {
    use tokio::io::AsyncReadExt;
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so that a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                HostHookOutcome::Failed(format!("{name} hook could not be started: {e}")),
                String::new(),
            )
        }
    };
    // Read both pipes to their end (when every process of the hook is gone), keeping the first bytes.
    let drain = |r: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let Some(mut r) = r else { return kept };
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = HOST_OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            kept
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let pid = child.id();
    let outcome = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) if s.success() => HostHookOutcome::Ok,
        Ok(Ok(s)) => HostHookOutcome::Failed(match s.code() {
            Some(c) => format!("{name} hook `{command}` failed with exit code {c}"),
            None => format!("{name} hook `{command}` was killed by a signal"),
        }),
        Ok(Err(e)) => HostHookOutcome::Failed(format!("{name} hook `{command}`: {e}")),
        Err(_) => {
            if let Some(pgid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            let _ = child.wait().await;
            HostHookOutcome::Failed(format!(
                "{name} hook `{command}` timed out after {} and was killed",
                humantime::format_duration(timeout)
            ))
        }
    };
    // A process that left the group keeps a pipe open: do not wait for it forever.
    let mut text = String::new();
    for h in [out, err] {
        if let Ok(Ok(bytes)) = tokio::time::timeout(Duration::from_secs(5), h).await {
            let t = String::from_utf8_lossy(&bytes);
            let t = t.trim_end();
            if !t.is_empty() {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(t);
            }
        }
    }
    (outcome, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::docker::ContainerState;

    fn ctr(name: &str, labels: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{name}"),
            name: name.into(),
            image: "img".into(),
            state: ContainerState::Running,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mounts: vec![],
        }
    }

    fn hooks(toml: &str) -> Hooks {
        Config::parse(toml)
            .unwrap()
            .job(None)
            .unwrap()
            .hooks
            .clone()
    }

    #[test]
    fn no_hooks_no_entry() {
        assert_eq!(resolve(&ctr("a", &[]), &hooks("")), None);
    }

    #[test]
    fn labels_string_is_shell_array_is_argv() {
        let h = resolve(
            &ctr(
                "a",
                &[
                    (LABEL_PRE_BACKUP, "pg_dump > /x"),
                    (LABEL_POST_BACKUP, r#"["/bin/rm","/x"]"#),
                    (LABEL_HOOK_USER, "postgres"),
                    (LABEL_HOOK_TIMEOUT, "90s"),
                    (LABEL_HOOK_ON_ERROR, "continue"),
                ],
            ),
            &hooks(""),
        )
        .unwrap();
        let pre = h.pre_backup.unwrap();
        assert_eq!(pre.command.to_argv(), ["sh", "-c", "pg_dump > /x"]);
        assert_eq!(pre.user.as_deref(), Some("postgres"));
        assert_eq!(pre.from, "label voltar.pre-backup");
        assert_eq!(h.post_backup.unwrap().command.to_argv(), ["/bin/rm", "/x"]);
        assert_eq!(h.timeout, Duration::from_secs(90));
        assert_eq!(h.on_error, OnError::Continue);
        assert_eq!(h.problem, None);
    }

    #[test]
    fn offen_labels_are_split_into_argv_and_voltar_labels_win() {
        let h = resolve(
            &ctr(
                "db",
                &[
                    (
                        OFFEN_ARCHIVE_PRE,
                        "/bin/sh -c 'mysqldump --all-databases > /b/dump.sql'",
                    ),
                    (OFFEN_ARCHIVE_PRE_USER, "mysql"),
                    (OFFEN_ARCHIVE_POST, "rm /b/dump.sql"),
                    (LABEL_POST_BACKUP, "echo mine"),
                ],
            ),
            &hooks(""),
        )
        .unwrap();
        let pre = h.pre_backup.unwrap();
        assert_eq!(
            pre.command.to_argv(),
            ["/bin/sh", "-c", "mysqldump --all-databases > /b/dump.sql"]
        );
        assert_eq!(pre.user.as_deref(), Some("mysql"));
        assert_eq!(pre.from, "label docker-volume-backup.archive-pre");
        let post = h.post_backup.unwrap();
        assert_eq!(post.command, HookCommand::Shell("echo mine".into()));
        assert_eq!(post.from, "label voltar.post-backup");
        assert_eq!(post.user, None);
    }

    #[test]
    fn config_per_container_fills_in_below_labels() {
        let toml = r#"
[hooks.container.db]
pre-backup = ["/usr/bin/dump", "--all"]
post-backup = "rm -f /backup/dump"
hook-user = "999"
hook-timeout = "1m"
hook-on-error = "continue"
"#;
        let h = resolve(&ctr("db", &[]), &hooks(toml)).unwrap();
        let pre = h.pre_backup.as_ref().unwrap();
        assert_eq!(pre.command.to_argv(), ["/usr/bin/dump", "--all"]);
        assert_eq!(pre.user.as_deref(), Some("999"));
        assert_eq!(pre.from, "config hooks.container.\"db\"");
        assert_eq!(h.timeout, Duration::from_secs(60));
        assert_eq!(h.on_error, OnError::Continue);
        // A label on the container wins, key by key.
        let h = resolve(
            &ctr(
                "db",
                &[(LABEL_PRE_BACKUP, "mine"), (LABEL_HOOK_ON_ERROR, "fail")],
            ),
            &hooks(toml),
        )
        .unwrap();
        assert_eq!(
            h.pre_backup.unwrap().command,
            HookCommand::Shell("mine".into())
        );
        assert_eq!(h.post_backup.unwrap().from, "config hooks.container.\"db\"");
        assert_eq!(h.on_error, OnError::Fail);
        // Another container is not concerned.
        assert_eq!(resolve(&ctr("web", &[]), &hooks(toml)), None);
        // A job's table replaces the top level's for that container.
        let c = Config::parse(&format!(
            "{toml}\n[job.j]\n[job.j.hooks.container.db]\npre-backup = \"other\"\n"
        ))
        .unwrap();
        let h = resolve(&ctr("db", &[]), &c.job(Some("j")).unwrap().hooks).unwrap();
        assert_eq!(
            h.pre_backup.unwrap().command,
            HookCommand::Shell("other".into())
        );
        assert_eq!(h.post_backup, None);
    }

    #[test]
    fn bad_settings_are_a_problem_not_ignored() {
        for labels in [
            &[(LABEL_PRE_BACKUP, "[not json")][..],
            &[(LABEL_PRE_BACKUP, "[]")][..],
            &[(LABEL_PRE_BACKUP, "x"), (LABEL_HOOK_TIMEOUT, "soon")][..],
            &[(LABEL_PRE_BACKUP, "x"), (LABEL_HOOK_ON_ERROR, "ignore")][..],
            &[(OFFEN_ARCHIVE_PRE, "sh -c 'unbalanced")][..],
        ] {
            let h = resolve(&ctr("a", labels), &hooks("")).unwrap();
            let p = h
                .problem
                .unwrap_or_else(|| panic!("{labels:?}: no problem"));
            assert!(p.contains("container a: label "), "{p}");
        }
        for bad in [
            "[hooks.container.a]\npre-backup = []\n",
            "[hooks.container.a]\nhook-timeout = \"0s\"\n",
            "[hooks.container.a]\nhook-on-error = \"maybe\"\n",
            "[hooks.container.a]\npre-bakup = \"x\"\n",
            "[hooks]\nbefore = \" \"\n",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn host_hook_gets_env_output_and_is_killed_at_its_timeout() {
        let env = vec![("VOLTAR_RESULT".to_string(), "ok".to_string())];
        let (o, out) = run_host_hook(
            "after",
            "echo \"r=$VOLTAR_RESULT\"; echo e >&2",
            &env,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(o, HostHookOutcome::Ok);
        assert_eq!(out, "r=ok\ne");
        let (o, _) = run_host_hook("after", "exit 4", &[], Duration::from_secs(10)).await;
        assert!(
            matches!(&o, HostHookOutcome::Failed(m) if m.contains("exit code 4")),
            "{o:?}"
        );
        // A child that keeps the pipes open is killed with the shell: the call returns at the timeout.
        let t = Instant::now();
        let (o, _) = run_host_hook(
            "before",
            "sleep 600 & sleep 601",
            &[],
            Duration::from_secs(1),
        )
        .await;
        assert!(
            matches!(&o, HostHookOutcome::Failed(m) if m.contains("timed out after 1s")),
            "{o:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn offen_stop_only_when_true() {
        let l = |v: &str| BTreeMap::from([(OFFEN_STOP_DURING_BACKUP.to_string(), v.to_string())]);
        assert!(offen_wants_stop(&l("true")));
        assert!(!offen_wants_stop(&l("false")));
        assert!(!offen_wants_stop(&l("nightly")));
        assert!(!offen_wants_stop(&BTreeMap::new()));
    }
}
