//! Restoring a `dump` source: `--to-container NAME` streams it into the restore command in that running
//! container (the preset's `psql`, `mysql`, `mongorestore --archive`, or a `voltar.dump-restore-command`), through
//! exec stdin; `--to-file PATH` writes it out, decompressed (and decrypted).
//!
//! A database takes what it is given at once, so there is no staging to check first as a volume restore has:
//! the stored object is read twice. The first read checks it whole — sha256 and size against the manifest,
//! decryption, the zstd checksum, the dump's recorded size — with nothing sent anywhere; only then is it read
//! again into the command. (If the object changed between the reads, the second read's check says so, and the
//! restore fails, naming that the database got the data.) A file is written under a temporary name next to
//! `PATH`, checked, fsynced and renamed into place: a failed restore leaves no file.
//!
//! The restore command's exit code decides; its stderr (capped) goes to the log and, line by line (at most
//! [`WARNINGS_SHOWN`]), into the report's warnings. `psql` (the `postgres` preset) reports errors and goes on,
//! exit code 0: there its stderr decides too (`dump::psql_errors`: an existing role or database is the expected
//! noise, any other error fails the restore). `mysql`/`mariadb` stop at the first error with exit code 1.

use std::io::Write;

use super::plan::{choose_sources, load_keys, open_backup};
use super::*;
use crate::docker::{ExecEnd, ExecSpec, ExecStdout};
use crate::readback::{RawError, RawReadBack};
use tokio::sync::mpsc;

/// Lines of the restore command's stderr kept as the report's warnings.
const WARNINGS_SHOWN: usize = 20;

/// Chunks of the dump that may wait for the restore command's stdin.
const STDIN_CHUNKS: usize = 8;

/// `voltar restore BACKUP --source DUMP --to-container NAME | --to-file PATH`.
pub async fn run(
    config: &Config,
    args: RestoreRequest,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<RestoreReport> {
    if args.to_volume.is_some() || args.to_dir.is_some() || !args.paths.is_empty() {
        bail!("--to-container and --to-file restore a dump; they do not go with --to-volume, --to-dir or --path");
    }
    if args.sources.len() != 1 {
        bail!("--to-container and --to-file restore one dump: name it with --source (e.g. --source dump@db; see `voltar show`)");
    }
    let (_target, store, manifest) = open_backup(&args).await?;
    let decryptor = load_keys(&args, &manifest)?;
    let src = choose_sources(&args, &manifest)?.remove(0);
    let Some(rec) = src.dump.clone().filter(|_| src.kind == SourceKind::Dump) else {
        bail!(
            "{} is a {}, not a database dump: --to-container and --to-file take a dump source (restore a volume \
             with --to-volume or --to-dir)",
            src.name,
            src.kind
        );
    };
    let ctx = DumpCtx {
        store,
        manifest,
        src,
        decryptor,
        progress,
    };
    let source = match (&args.to_container, &args.to_file) {
        (Some(c), _) => {
            let engine = Engine::connect(config.docker_host.as_deref()).await?;
            into_container(&ctx, &engine, &rec, c, args.dry_run, &cancel).await?
        }
        (None, Some(f)) => into_file(&ctx, f, args.force, args.dry_run).await?,
        (None, None) => bail!("internal error: a dump restore without --to-container or --to-file"),
    };
    ctx.progress.finish();
    Ok(RestoreReport {
        backup: Some(ctx.manifest.id.to_string()),
        dry_run: args.dry_run,
        sources: vec![source],
        recovered: vec![],
    })
}

/// What both ways share: the opened backup, the source and the keys.
struct DumpCtx {
    store: Arc<dyn Storage>,
    manifest: Manifest,
    src: SourceRecord,
    decryptor: Arc<Decryptor>,
    progress: Progress,
}

impl DumpCtx {
    /// Read the dump whole into `sink`, then judge the read: `Ok(bytes)` when the stored object matches the
    /// manifest (sha256, size) and decoded to the dump's recorded size.
    async fn read_into(&self, sink: Box<dyn Write + Send>) -> Result<u64, DumpReadError> {
        self.progress
            .phase(&format!("restore {} {}", self.manifest.id, self.src.name));
        self.progress.expect_bytes(Some(self.src.stored_bytes));
        let rb = readback::read_raw(
            self.store.clone(),
            &self.manifest,
            &self.src,
            self.decryptor.clone(),
            sink,
            false,
            self.progress.clone(),
        )
        .await
        .map_err(|e| DumpReadError::Bad(format!("{}: {e}", self.src.object)))?;
        judge(rb, &self.src)
    }

    fn report(
        &self,
        destination: Destination,
        path: PathBuf,
        status: RestoreStatus,
    ) -> SourceRestore {
        SourceRestore {
            source: self.src.name.clone(),
            destination,
            path,
            create_volume: false,
            stop: vec![],
            stopped: vec![],
            would_remove: None,
            changes: None,
            counts: self.src.counts.clone(),
            safety_backup: None,
            undo: None,
            restarted: vec![],
            downtime_ms: BTreeMap::new(),
            services: vec![],
            warnings: vec![],
            status,
            command: None,
            through_engine: false,
        }
    }
}

/// Why reading a dump failed.
enum DumpReadError {
    /// The stored object is bad (or could not be got).
    Bad(String),
    /// The sink refused the bytes.
    Sink(String),
}

/// The verdict on one raw read of `src`.
fn judge(rb: RawReadBack, src: &SourceRecord) -> Result<u64, DumpReadError> {
    let object = rb.key;
    let n = match rb.copied {
        Ok(n) => n,
        Err(RawError::Open(e)) => return Err(DumpReadError::Bad(e.to_string())),
        Err(RawError::Read(e)) => {
            return Err(DumpReadError::Bad(format!("{object}: corrupt dump: {e}")))
        }
        Err(RawError::Write(e)) => return Err(DumpReadError::Sink(e.to_string())),
    };
    let (sha, size) = match rb.digest {
        Some(Ok(d)) => d,
        Some(Err(e)) => return Err(DumpReadError::Bad(format!("{object}: reading: {e}"))),
        None => return Err(DumpReadError::Bad(format!("{object}: not hashed"))),
    };
    if sha != src.sha256 || size != src.stored_bytes {
        return Err(DumpReadError::Bad(
            RestoreError::Checksum {
                object,
                expected: src.sha256.clone(),
                found: sha,
                expected_size: src.stored_bytes,
                found_size: size,
            }
            .to_string(),
        ));
    }
    if n != src.counts.bytes {
        return Err(DumpReadError::Bad(format!(
            "{object}: the dump decompresses to {n} bytes, the manifest says {}; the object is truncated or corrupt",
            src.counts.bytes
        )));
    }
    Ok(n)
}

/// Stream the dump into the restore command in the running container `name`.
async fn into_container(
    ctx: &DumpCtx,
    engine: &Engine,
    rec: &catalog::DumpRecord,
    name: &str,
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<SourceRestore> {
    let discovery = engine.discover().await?;
    let Some(c) = discovery
        .containers
        .iter()
        .find(|c| c.name == name || c.id == name)
    else {
        bail!("no container `{name}` (see `docker ps`): --to-container names the running database to restore into");
    };
    if c.state != ContainerState::Running {
        bail!(
            "container {name} is {}: the dump is streamed into the running database; start it first",
            c.state
        );
    }
    // The container's own `voltar.dump-restore-command` label first, then what the backup recorded.
    let own = crate::dump::resolve(c);
    let command = match c.labels.get(crate::dump::LABEL_DUMP_RESTORE_COMMAND) {
        Some(text) => crate::config::HookCommand::parse(text).map_err(|e| {
            anyhow!(
                "container {name}: label {}: {e}",
                crate::dump::LABEL_DUMP_RESTORE_COMMAND
            )
        })?,
        None => crate::dump::restore_command(rec).map_err(|e| anyhow!("{}: {e}", ctx.src.name))?,
    };
    let timeout = own
        .filter(|d| d.problem.is_none())
        .map(|d| d.timeout)
        .unwrap_or(crate::dump::DEFAULT_DUMP_TIMEOUT);
    let destination = Destination::Container(c.name.clone());
    let mut sr = ctx.report(destination, PathBuf::new(), RestoreStatus::DryRun);
    sr.command = Some(command.to_string());
    if dry_run {
        return Ok(sr);
    }

    // 1. The whole object checked, nothing sent anywhere yet.
    if let Err(e) = ctx.read_into(Box::new(std::io::sink())).await {
        let why = match e {
            DumpReadError::Bad(w) | DumpReadError::Sink(w) => w,
        };
        sr.status = RestoreStatus::Failed(format!("{why}; nothing was sent to container {name}"));
        return Ok(sr);
    }
    if cancel.is_cancelled() {
        bail!("interrupted");
    }
    // 2. Into the command's stdin.
    ctx.progress.note(&format!(
        "{}: restoring into container {name}",
        ctx.src.name
    ));
    let (tx, rx) = mpsc::channel(STDIN_CHUNKS);
    let spec = ExecSpec {
        argv: command.to_argv(),
        user: None,
        env: vec![],
        timeout,
    };
    let (read, outcome) = tokio::join!(
        ctx.read_into(Box::new(ChannelWriter { tx })),
        engine.exec_with_stdin(&c.id, &spec, ExecStdout::Capture, rx, cancel)
    );
    let what = format!("the restore command in container {name} (`{command}`)");
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            sr.status = RestoreStatus::Failed(format!("{what} could not be run: {e}"));
            return Ok(sr);
        }
    };
    let said = outcome.stderr.text();
    if !said.is_empty() {
        let text = format!("{}: {what} said:\n{said}", ctx.src.name);
        if outcome.success() {
            ctx.progress.note(&text);
        } else {
            ctx.progress.warn(&text);
        }
        sr.warnings.extend(
            said.lines()
                .filter(|l| !l.trim().is_empty())
                .take(WARNINGS_SHOWN)
                .map(|l| format!("{name}: {}", l.trim())),
        );
    }
    let partly = "; the database may hold part of the dump";
    // psql goes on after an error and exits 0: its stderr says whether the database holds the dump.
    // (The preset's psql, not a restore command of the user's: none on the container, none but the preset's
    // recorded with the dump.)
    let preset = crate::dump::Preset::Postgres.restore_command().ok();
    let psql = !c
        .labels
        .contains_key(crate::dump::LABEL_DUMP_RESTORE_COMMAND)
        && rec.preset.as_deref() == Some("postgres")
        && rec
            .restore_command
            .as_ref()
            .is_none_or(|r| preset.is_some_and(|p| p.to_string() == *r));
    let psql_failed = match crate::dump::psql_errors(&said).as_slice() {
        _ if !psql => None,
        [] if outcome.stderr.dropped > 0 => Some(format!(
            "{what} wrote more on stderr than voltar keeps ({} bytes were not read), so its errors could not \
             all be checked; see the log{partly}",
            outcome.stderr.dropped
        )),
        [] => None,
        [first, rest @ ..] => Some(format!(
            "{what} reported {} error(s), the first: {first}{partly}",
            rest.len() + 1
        )),
    };
    sr.status = match (&outcome.end, outcome.exit_code, read) {
        (ExecEnd::Exited, Some(0), Ok(_)) if psql_failed.is_some() => {
            RestoreStatus::Failed(psql_failed.unwrap_or_default())
        }
        (ExecEnd::Exited, Some(0), Ok(_)) => RestoreStatus::Ok,
        (ExecEnd::Exited, Some(0), Err(DumpReadError::Bad(why))) => RestoreStatus::Failed(format!(
            "{why} (the object changed after it was checked){partly}"
        )),
        (ExecEnd::Exited, Some(0), Err(DumpReadError::Sink(why))) => RestoreStatus::Failed(
            format!("{what} stopped reading the dump before its end ({why}){partly}"),
        ),
        (ExecEnd::Exited, Some(code), _) => {
            RestoreStatus::Failed(format!("{what} failed with exit code {code}{partly}"))
        }
        (ExecEnd::Exited, None, _) => {
            RestoreStatus::Failed(format!("{what} ended without an exit code{partly}"))
        }
        (ExecEnd::TimedOut(k), _, _) => RestoreStatus::Failed(format!(
            "{what} timed out after {}: {k}{partly}",
            humantime::format_duration(timeout)
        )),
        (ExecEnd::Cancelled(k), _, _) => {
            RestoreStatus::Failed(format!("{what} was interrupted: {k}{partly}"))
        }
    };
    Ok(sr)
}

/// A `Write` that sends what it is given over a channel (from a blocking thread).
struct ChannelWriter {
    tx: mpsc::Sender<bytes::Bytes>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(bytes::Bytes::copy_from_slice(buf))
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the restore command closed its input",
                )
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Write the dump, decompressed, to `path`: a temporary file next to it, checked, fsynced, renamed into place.
async fn into_file(
    ctx: &DumpCtx,
    path: &Path,
    force: bool,
    dry_run: bool,
) -> Result<SourceRestore> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(file_name) = path.file_name() else {
        bail!("--to-file {}: not a file name", path.display());
    };
    if !parent.is_dir() {
        bail!(
            "--to-file {}: directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    if path.exists() && !force {
        bail!(
            "{} exists: it would be replaced; pass --force to allow it",
            path.display()
        );
    }
    let mut sr = ctx.report(
        Destination::File(path.to_path_buf()),
        path.to_path_buf(),
        RestoreStatus::DryRun,
    );
    if dry_run {
        return Ok(sr);
    }
    let temp = parent.join(format!(
        ".{}.voltar-tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        // A database dump may hold password hashes: readable by its owner only.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("creating {}", temp.display()))?
    };
    let read = ctx
        .read_into(Box::new(std::io::BufWriter::with_capacity(256 << 10, file)))
        .await;
    let done = match read {
        Ok(_) => durable_rename(&temp, path, &parent),
        Err(DumpReadError::Bad(w)) => Err(anyhow!(w)),
        Err(DumpReadError::Sink(w)) => Err(anyhow!("writing {}: {w}", temp.display())),
    };
    sr.status = match done {
        Ok(()) => RestoreStatus::Ok,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            RestoreStatus::Failed(format!("{}; no file was written", crate::error_chain(&e)))
        }
    };
    Ok(sr)
}

/// fsync `temp`, rename it to `path`, fsync the directory.
fn durable_rename(temp: &Path, path: &Path, dir: &Path) -> Result<()> {
    std::fs::File::open(temp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", temp.display()))?;
    std::fs::rename(temp, path)
        .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(())
}
