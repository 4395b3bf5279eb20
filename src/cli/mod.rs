//! Command line: clap types, output formatting (tables, `--json`) and exit codes. No business logic here.
//!
//! Exit codes (for cron and monitoring): 0 everything succeeded; 1 the command ran but something failed (a
//! source, a target, a verification); 2 fatal or usage error (bad config, unreachable engine, unknown backup);
//! 130/143 interrupted by SIGINT/SIGTERM (containers were resumed, nothing was committed).

mod backup;
mod catalog;
mod check;
mod daemon;
mod key;
pub mod mirror;
pub mod prune;
mod render;
mod restore;
mod target;
mod verify;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Placeholders, Target};
use crate::docker::Engine;
use crate::progress::Progress;
use crate::storage;

pub use self::render::{emit, human, human_ms, out, out_json, table};
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_FATAL: i32 = 2;

/// Heading of the options every command takes: listed after a command's own.
const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(
    name = "voltar",
    version,
    about = "Back up and restore Docker volumes: consistent, streaming, local and S3, encrypted",
    after_help = "Exit codes: 0 ok, 1 something failed, 2 fatal or usage error, 130/143 interrupted.\nDocs: README.md; config reference: config.example.toml"
)]
pub struct Cli {
    /// Config file (default: /etc/voltar/config.toml, then ./voltar.toml, else built-in defaults).
    #[arg(short, long, global = true, env = "VOLTAR_CONFIG", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,
    /// Machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    /// More log output (-v info, -vv debug, -vvv trace). VOLTAR_LOG=... overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,
    /// Only errors on stderr, no progress bar; `backup` prints its summary only when something failed (cron).
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
    /// Log lines on stderr as text, or as one JSON object a line (with a timestamp) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VOLTAR_LOG_FORMAT", help_heading = GLOBAL)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--target` of the commands that work on every target given (backup, prune).
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Storage to use: a directory, file:///dir, s3://bucket/prefix, or the name of a configured target.
    /// A bare name must be a configured target or an existing directory (write ./NAME for a new one).
    /// Repeat for several. Overrides the job's targets.
    #[arg(short = 't', long = "target", value_name = "TARGET")]
    pub targets: Vec<String>,
}

/// `--target` of the command that reads one target (restore).
#[derive(Debug, Clone, Args)]
pub struct ReadTargetArgs {
    /// Storage to read from: a directory, file:///dir, s3://bucket/prefix, or the name of a configured target
    /// (default: the job's first target). A bare name must be a configured target or an existing directory.
    #[arg(short = 't', long = "target", value_name = "TARGET")]
    pub target: Option<String>,
}

/// `--target` of the commands that read every target given (list, show, verify).
#[derive(Debug, Clone, Args)]
pub struct ReadTargetsArgs {
    /// Storage to read from: a directory, file:///dir, s3://bucket/prefix, or the name of a configured target
    /// (default: every target of the job). Repeat to read several. A bare name must be a configured target or an
    /// existing directory.
    #[arg(short = 't', long = "target", value_name = "TARGET")]
    pub targets: Vec<String>,
}

impl ReadTargetsArgs {
    /// As the target list [`resolve_targets`] takes.
    pub fn as_list(&self) -> TargetArgs {
        TargetArgs {
            targets: self.targets.clone(),
        }
    }
}

impl ReadTargetArgs {
    /// As the target list [`resolve_targets`] takes.
    pub fn as_list(&self) -> TargetArgs {
        TargetArgs {
            targets: self.target.iter().cloned().collect(),
        }
    }
}

/// `--wait [DURATION]` of the commands that lock their targets (backup, restore, prune).
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// When another voltar run is using a target, wait for it to finish (up to DURATION, e.g. 30m or 6h;
    /// default 1h) instead of failing at once. Nothing is stopped or paused while waiting.
    #[arg(
        long,
        value_name = "DURATION",
        num_args = 0..=1,
        default_missing_value = DEFAULT_WAIT,
        value_parser = wait_duration
    )]
    pub wait: Option<std::time::Duration>,
}

/// `--wait` given without a duration. An hour covers a nightly run of most hosts; a cron job that waits longer
/// should say so (`--wait 6h`), so that runs do not pile up unseen behind a hung one.
pub const DEFAULT_WAIT: &str = "1h";

impl WaitArgs {
    /// The budget, counted from now (the command's start).
    pub fn start(&self) -> Option<crate::lock::Wait> {
        self.wait.map(crate::lock::Wait::new)
    }
}

/// `--wait`'s value. `--wait` takes the next word when it does not start with `-`: a restore's backup id after
/// it would be read as a duration, so say how to write that.
fn wait_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s).map_err(|_| {
        format!(
            "expected a duration such as 30s, 10m or 2h; got `{s}` (for the default of {DEFAULT_WAIT}, put \
             --wait after the other arguments, or write --wait={DEFAULT_WAIT})"
        )
    })
}

/// Help of `--job` (the same on every command that takes it).
const JOB_HELP: &str =
    "The job to use, as configured in [job.NAME] (default: the job named `default`, or the only one)";

#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// age identity file or ssh private key for encrypted backups (repeatable).
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub identities: Vec<PathBuf>,
    /// File holding the passphrase of passphrase-encrypted backups.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what would be backed up: volumes, bind mounts, the containers using them and what voltar will do.
    #[command(alias = "discover")]
    Plan {
        #[arg(long, value_name = "NAME", help = JOB_HELP)]
        job: Option<String>,
        /// Only these sources.
        #[arg(long = "only", value_name = "SOURCE")]
        only: Vec<String>,
        /// Skip computing sizes (faster on huge volumes).
        #[arg(long)]
        no_size: bool,
    },
    /// Back up the selected volumes and bind mounts.
    Backup {
        #[arg(long, value_name = "NAME", help = JOB_HELP)]
        job: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
        /// Only these sources (volume names or bind-… names from `voltar plan`).
        #[arg(long = "only", value_name = "SOURCE")]
        only: Vec<String>,
        /// Show the plan and stop.
        #[arg(long)]
        dry_run: bool,
        /// Do not prune after the backup, even when the job has a retention policy.
        #[arg(long)]
        no_prune: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List the backups in each target.
    List {
        #[arg(long, value_name = "NAME", help = JOB_HELP)]
        job: Option<String>,
        #[command(flatten)]
        target: ReadTargetsArgs,
    },
    /// Show one backup: sources, sizes, containers, downtime, sha256.
    Show {
        /// Backup id or `latest`.
        backup: String,
        /// With `latest`: the newest backup that holds these sources.
        #[arg(long = "source", value_name = "NAME")]
        sources: Vec<String>,
        #[arg(long, value_name = "NAME", help = JOB_HELP)]
        job: Option<String>,
        #[command(flatten)]
        target: ReadTargetsArgs,
    },
    /// Restore volumes from a backup (or import a plain archive with --archive).
    Restore(restore::RestoreArgs),
    /// Check that backups are complete and restorable.
    Verify(verify::VerifyArgs),
    /// Delete backups by the retention policy.
    Prune(prune::PruneArgs),
    /// Check the config and everything a run needs before the night (`voltar config check`).
    #[command(subcommand)]
    Config(check::ConfigCommand),
    /// Check one target with a real round trip before trusting backups to it (`voltar target check NAME|URL`).
    #[command(subcommand)]
    Target(target::TargetCommand),
    /// Make an age key for encrypted backups, or show the public key of one.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Put back containers that a killed run left paused or stopped, and remove restore staging directories it
    /// left behind.
    Recover,
    /// Run the jobs that have a `schedule`, and serve /healthz and /metrics on [daemon] listen. SIGHUP reloads
    /// the config; SIGTERM/SIGINT cancel the running backup (containers resumed) and exit 0.
    Daemon,
    /// Per job and target: the last run, its result, size and duration, the next run; and the volumes no job
    /// backs up.
    Status,
    /// Ask the running daemon's /healthz: exit 0 when healthy, 1 when not or when nothing answers (for a
    /// container HEALTHCHECK without curl).
    Healthcheck,
    /// Make /voltar/dst exactly equal to /voltar/src (run by a restore in place through the engine, in a
    /// container of voltar's image; not for direct use).
    #[command(name = "engine-mirror", hide = true)]
    EngineMirror(mirror::EngineMirrorArgs),
}

/// A count flag's value: a whole number, said in those words when it is not one (not "invalid digit").
pub(crate) fn whole_number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected a whole number (0 or more), e.g. 7; got `{s}`"))
}

/// Entry point used by `main`: parse, run, map to an exit code.
pub fn main() -> i32 {
    // Known before parsing, so that a usage error is JSON too when `--json` was asked for.
    let json_asked = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_FATAL } else { EXIT_OK };
            let _ = e.print();
            if json_asked && e.use_stderr() {
                error_json(&usage_error(&e), code);
            }
            return code;
        }
    };
    if let Command::EngineMirror(args) = &cli.command {
        // In a helper container: no config, no engine, no runtime.
        return mirror::command(args);
    }
    init_logging(cli.verbose, cli.quiet, cli.log_format);
    let json = cli.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let msg = format!("cannot start the async runtime: {e}");
            eprintln!("voltar: error: {msg}");
            if json {
                error_json(&msg, EXIT_FATAL);
            }
            return EXIT_FATAL;
        }
    };
    let cancel = CancellationToken::new();
    let stop = Stopping::of(&cli.command);
    let signal = rt.block_on(async { install_signals(cancel.clone(), stop) });
    let result = rt.block_on(async {
        let cmd = run(cli, cancel.clone());
        if stop == Stopping::Drop {
            // Nothing to put back: stop at once instead of waiting for a request or its retries.
            tokio::select! {
                r = cmd => r,
                _ = cancel.cancelled() => Err(anyhow::anyhow!("interrupted")),
            }
        } else {
            cmd.await
        }
    });
    let (code, error) = match result {
        Ok(code) => (code, None),
        Err(e) => {
            let msg = if cancel.is_cancelled() {
                let msg = format!("interrupted{}", stop.after());
                eprintln!("voltar: {msg}");
                msg
            } else {
                let msg = chain(&e);
                eprintln!("voltar: error: {msg}");
                msg
            };
            (EXIT_FATAL, Some(msg))
        }
    };
    // A dropped command may leave a blocking read or a request behind: do not wait for it.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    // A daemon that stopped cleanly on a signal exits 0 (a service manager's normal stop).
    let code = if cancel.is_cancelled() && !(stop == Stopping::Daemon && error.is_none()) {
        signal.load(std::sync::atomic::Ordering::SeqCst)
    } else {
        code
    };
    if let (true, Some(msg)) = (json, error) {
        error_json(&msg, code);
    }
    code
}

/// A command that failed as a whole, with `--json`: the error on stdout as well (`{"error": …, "exit-code": …}`),
/// so that scripts never parse stderr. The human line stays on stderr (cron mails).
fn error_json(msg: &str, code: i32) {
    #[derive(serde::Serialize)]
    struct Failure<'a> {
        error: &'a str,
        #[serde(rename = "exit-code")]
        exit_code: i32,
    }
    out_json(&Failure {
        error: msg,
        exit_code: code,
    });
}

/// A usage error in one line: clap's first paragraph, without its `error: ` (usage and tips stay on stderr).
fn usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or_default().trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{} (see --help)", first.replace('\n', " "))
}

/// What a SIGINT/SIGTERM does to a command, and what it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stopping {
    /// Backup: the run resumes its containers and discards the unfinished backup itself.
    Backup,
    /// Restore (and recover): the command puts containers and volumes back itself.
    Restore,
    /// `verify --restore-test`: the command removes its scratch volume itself.
    RestoreTest,
    /// Read-only or crash-safe commands (plan, list, show, verify, prune): dropped at once.
    Drop,
    /// The daemon: no new runs, the running backup is cancelled (and puts its containers back), exit 0.
    Daemon,
}

impl Stopping {
    fn of(c: &Command) -> Stopping {
        match c {
            Command::Backup { .. } => Stopping::Backup,
            Command::Restore(_) | Command::Recover => Stopping::Restore,
            Command::Verify(a) if a.restore_test => Stopping::RestoreTest,
            Command::Daemon => Stopping::Daemon,
            _ => Stopping::Drop,
        }
    }
    fn now(self) -> &'static str {
        match self {
            Stopping::Backup => {
                "stopping: resuming containers and discarding the unfinished backup"
            }
            Stopping::Restore => "stopping: putting containers back; nothing more is swapped in",
            Stopping::RestoreTest => "stopping: removing the scratch volume",
            Stopping::Drop => "stopping",
            Stopping::Daemon => {
                "stopping: no new runs; a running backup resumes its containers and commits nothing"
            }
        }
    }
    /// What a second signal has to wait for (a dropped command waits for nothing).
    fn first(self) -> Option<&'static str> {
        match self {
            Stopping::Drop => None,
            Stopping::RestoreTest => Some("removing the scratch volume"),
            Stopping::Backup | Stopping::Restore | Stopping::Daemon => {
                Some("putting containers back")
            }
        }
    }
    fn after(self) -> &'static str {
        match self {
            Stopping::Backup => ": containers were resumed, nothing was committed",
            Stopping::Restore => ": containers were put back; no volume was left half-restored",
            Stopping::RestoreTest => ": no scratch volume was left",
            Stopping::Drop | Stopping::Daemon => "",
        }
    }
}

pub use crate::error_chain as chain;

fn init_logging(verbose: u8, quiet: bool, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet {
        "error"
    } else {
        match verbose {
            0 => "voltar=warn",
            1 => "voltar=info",
            2 => "voltar=debug",
            // Never below info for the AWS SDK: it could log request details.
            _ => "voltar=trace,aws=info,aws_smithy=info,hyper=info",
        }
    };
    let filter = EnvFilter::try_from_env("VOLTAR_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // No colour codes in cron mails, log files and pipes.
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .with_target(false)
            .without_time()
            .try_init(),
        // A shipper wants every line to parse, and its own time of each event.
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init(),
    };
}

/// First SIGINT/SIGTERM cancels the run (the guard still resumes containers). Returns the exit code to use.
fn install_signals(
    cancel: CancellationToken,
    stop: Stopping,
) -> std::sync::Arc<std::sync::atomic::AtomicI32> {
    use tokio::signal::unix::{signal, SignalKind};
    let code = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(130));
    let c2 = code.clone();
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            let n = tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            };
            if cancel.is_cancelled() {
                if let Some(first) = stop.first() {
                    eprintln!("voltar: already stopping: {first} first");
                }
                continue;
            }
            c2.store(n, std::sync::atomic::Ordering::SeqCst);
            eprintln!("voltar: {}", stop.now());
            // Cancel first: a request that gives up because of the shutdown below must find the run
            // cancelled, so that its error is reported as the interruption it is.
            cancel.cancel();
            // Retries end now everywhere (storage requests get a short grace, then give up).
            crate::storage::retry::request_shutdown();
        }
    });
    code
}

async fn connect(config: &Config) -> Result<Engine> {
    Ok(Engine::connect(config.docker_host.as_deref()).await?)
}

/// The targets a command uses: `--target` values (URLs or configured names), else the job's.
pub fn resolve_targets(
    config: &Config,
    job: Option<&str>,
    args: &TargetArgs,
) -> Result<Vec<Target>> {
    if !args.targets.is_empty() {
        return args
            .targets
            .iter()
            .map(|t| Ok(config.target_arg(t)?))
            .collect();
    }
    let job = config.job(job)?;
    let targets: Vec<Target> = job
        .targets
        .iter()
        .filter_map(|n| config.targets.get(n).cloned())
        .collect();
    if targets.is_empty() {
        anyhow::bail!(
            "no target: pass --target DIR or s3://bucket/prefix, or configure [target.NAME] in the config"
        );
    }
    Ok(targets)
}

/// The one target a read command uses: the first of [`resolve_targets`].
pub async fn open_one(
    config: &Config,
    job: Option<&str>,
    args: &TargetArgs,
) -> Result<std::sync::Arc<dyn storage::Storage>> {
    let t = resolve_targets(config, job, args)?.remove(0);
    let s = storage::open(&t)
        .await
        .with_context(|| format!("opening target {}", t.name))?;
    Ok(s)
}

/// What `{node}` and `{hostname}` in the configured targets stand for in this run (issue 15), found once, before
/// any target is opened or locked. `{node}` is `VOLTAR_NODE` when set (to read another node's backups), else the
/// engine's name — asked (`GET /info`) only when a target uses `{node}`, so that other configs call no endpoint
/// more than before. `{hostname}` costs nothing and is always known.
pub(crate) async fn placeholders(config: &Config) -> Result<Placeholders> {
    let mut p = Placeholders::default();
    match std::env::var("VOLTAR_NODE") {
        Ok(v) if !v.is_empty() => p.node = Some((v, "VOLTAR_NODE".to_string())),
        _ if config.placeholders().contains("node") => {
            let user = config
                .targets
                .values()
                .find(|t| t.placeholders().contains("node"))
                .map(|t| format!("target.{}", t.name))
                .unwrap_or_else(|| "a target".into());
            let fix = || {
                format!(
                    "{user} uses {{node}}, the engine's name, which could not be read; \
                     set VOLTAR_NODE to this node's name"
                )
            };
            let engine = connect(config).await.with_context(fix)?;
            let name = engine.name().await.with_context(fix)?;
            let from = format!("the name of the engine at {}", engine.endpoint());
            p.node = Some((name, from));
        }
        _ => {}
    }
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    p.hostname = Some((host, "this machine's host name".to_string()));
    Ok(p)
}

async fn run(cli: Cli, cancel: CancellationToken) -> Result<i32> {
    let config_path = cli.config.clone();
    let mut config = match cli.command {
        // Needs no config (and works where none exists yet).
        Command::Key(_) => Config::default(),
        _ => Config::load(cli.config.as_deref())?,
    };
    // Targets' placeholders are filled in once, here, so that every command (and every lock key) sees only the
    // expanded targets. `status` and `healthcheck` name targets only, and must not wait for the engine.
    let placeholders = match cli.command {
        Command::Key(_) | Command::Status | Command::Healthcheck => Placeholders::default(),
        _ => placeholders(&config).await?,
    };
    config.expand_targets(&placeholders)?;
    let progress = if cli.json || cli.quiet {
        Progress::hidden()
    } else {
        Progress::new(true)
    };
    match cli.command {
        Command::Plan { job, only, no_size } => {
            backup::plan(&config, job, only, no_size, cli.json).await
        }
        Command::Backup {
            job,
            target,
            only,
            dry_run,
            no_prune,
            wait,
        } => {
            let flags = backup::BackupFlags {
                job,
                target,
                only,
                dry_run,
                no_prune,
                wait: wait.start(),
            };
            backup::backup(&config, flags, cli.json, cli.quiet, progress, cancel).await
        }
        Command::List { job, target } => catalog::list(&config, job, target, cli.json).await,
        Command::Show {
            backup,
            sources,
            job,
            target,
        } => catalog::show(&config, backup, sources, job, target, cli.json).await,
        Command::Restore(args) => restore::command(&config, args, cli.json, progress, cancel).await,
        Command::Verify(args) => verify::command(&config, args, cli.json, progress, cancel).await,
        Command::Prune(args) => prune::command(&config, args, cli.json, progress).await,
        Command::Key(cmd) => key::command(cmd, cli.json, cli.quiet),
        Command::Config(cmd) => check::command(&config, cmd, cli.json).await,
        Command::Target(cmd) => target::command(&config, cmd, cli.json).await,
        Command::Recover => {
            let engine = connect(&config).await?;
            let run = crate::quiesce::recover_run(&config.state_dir, &config.spool_dir(), &engine)
                .await?;
            let lines = run.lines();
            if cli.json {
                out_json(&serde_json::json!({ "recovered": lines }));
            } else if lines.is_empty() {
                out("nothing to recover: no interrupted run left containers paused or stopped, or restore staging directories behind\n");
            } else {
                out(&lines.iter().map(|l| format!("{l}\n")).collect::<String>());
            }
            Ok(EXIT_OK)
        }
        Command::Daemon => {
            daemon::daemon(config, config_path, placeholders, cli.json, cancel).await
        }
        Command::Status => daemon::status(&config, cli.json).await,
        Command::Healthcheck => daemon::healthcheck(&config, cli.json).await,
        Command::EngineMirror(args) => Ok(mirror::command(&args)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn built() -> clap::Command {
        let mut cmd = Cli::command();
        cmd.build();
        cmd
    }

    fn sub<'a>(cmd: &'a clap::Command, path: &[&str]) -> &'a clap::Command {
        path.iter().fold(cmd, |c, name| {
            c.find_subcommand(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"))
        })
    }

    fn help_of(cmd: &clap::Command, arg: &str) -> String {
        let a = cmd
            .get_arguments()
            .find(|a| a.get_id() == arg)
            .unwrap_or_else(|| panic!("{} has no {arg}", cmd.get_name()));
        a.get_long_help()
            .or(a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
    }

    /// Issue 10: every command has a description and every flag and argument of every command has help.
    #[test]
    fn issue10_every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: String, missing: &mut Vec<String>) {
            if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
                missing.push(format!("`{path}` (the command)"));
            }
            for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("`{path}` {}", a.get_id()));
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&built(), "voltar".into(), &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }

    /// Issue 10: the commands that read do not talk about writing; list, show and verify read several targets
    /// (every target of the job by default), restore reads one; backup and prune say that --target repeats.
    #[test]
    fn issue10_read_commands_have_their_own_target_help() {
        let cmd = built();
        for name in ["list", "show", "verify"] {
            let h = help_of(sub(&cmd, &[name]), "targets");
            assert!(h.contains("read"), "{name}: {h}");
            assert!(h.contains("every target of the job"), "{name}: {h}");
            assert!(h.contains("Repeat to read several"), "{name}: {h}");
            assert!(
                !h.contains("write"),
                "{name} --target help says `write`: {h}"
            );
        }
        let h = help_of(sub(&cmd, &["restore"]), "target");
        assert!(h.contains("read"), "restore: {h}");
        for word in ["several", "write", "Repeat"] {
            assert!(
                !h.contains(word),
                "restore --target help says `{word}`: {h}"
            );
        }
        for name in ["backup", "prune"] {
            let h = help_of(sub(&cmd, &[name]), "targets");
            assert!(h.contains("Repeat for several"), "{name}: {h}");
        }
    }

    /// Issue 10: no internal function names in what users read: no string in `src/` names a snake_case
    /// identifier in backticks (as "`sweep_incomplete` removes it later" did). Config keys are kebab-case.
    #[test]
    fn issue10_messages_name_no_internal_functions() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for e in walkdir::WalkDir::new(&src).into_iter().flatten() {
            if e.path().extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") || !code.contains('"') {
                    continue;
                }
                // Backticked words: every other piece between backticks.
                for word in code.split('`').skip(1).step_by(2) {
                    let ident = word.starts_with(|c: char| c.is_ascii_lowercase())
                        && word.contains('_')
                        && word
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    if ident {
                        found.push(format!("{}:{}: {word}", e.path().display(), n + 1));
                    }
                }
            }
        }
        assert!(found.is_empty(), "internal names in messages: {found:#?}");
    }

    /// Issue 10: a command's own options come first in its help, the global ones after them.
    #[test]
    fn issue10_command_options_come_before_global_ones() {
        let mut cmd = built();
        let list = cmd.find_subcommand_mut("list").unwrap();
        let help = list.render_long_help().to_string();
        let at = |s: &str| {
            help.find(s)
                .unwrap_or_else(|| panic!("`{s}` not in the help:\n{help}"))
        };
        assert!(at("--job") < at("Global options:"), "{help}");
        assert!(at("--target") < at("Global options:"), "{help}");
        assert!(at("Global options:") < at("--json"), "{help}");
        assert!(at("Global options:") < at("--config"), "{help}");
    }
}
