//! One `dump` source of a run: the dump command runs inside its (running) container through exec, and its stdout
//! goes through the same pipeline as an archive — zstd → [age] → sha256 → one upload per target — with no temp
//! file and bounded memory (the exec's output channel and the pipeline's channels are bounded, and under
//! `Pace::Backpressure` the slowest target sets the pace; nothing is quiesced, so nothing is spooled).
//!
//! The command's stderr is captured (capped, `docker::exec::CAPTURE_CAP`) into the log only: it may hold
//! anything. A dump that exits non-zero, times out, is interrupted or cannot be run fails its source, and every
//! upload of it is aborted: nothing half is committed (the manifest does not list it).
//!
//! Threads: the exec's output is read on this task and sent over a bounded channel to a blocking thread that
//! compresses (and encrypts) into a `ChunkSink`, whose chunks `pipeline::fan_out` hands to every target.

use super::source::{not_stored, open_legs, pack_failed, settle_legs, status};
use super::*;
use crate::docker::{ExecEnd, ExecSpec, ExecStdout};
use crate::dump::DumpSpec;

/// Raw chunks of the dump that may wait between the exec and the compressor (each as the engine sent it, at most
/// a few tens of KiB).
const RAW_CHANNEL: usize = 16;

/// What the compressor returns: sha256 and size of the stored object, and the dump's own size.
type Compressed = (String, u64, u64);

/// Back up `src`, the dump `spec`, to every open target.
pub(super) async fn back_up_dump(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
    spec: &DumpSpec,
) -> SourceReport {
    let mut report = SourceReport::planned(src);
    ctx.env.progress.phase(&format!("dump {}", spec.container));
    ctx.env.progress.expect_bytes(None);
    if let Some(p) = &spec.problem {
        report.error = Some(p.clone());
        return report;
    }
    let object = catalog::dump_object_name(&src.name, spec.extension(), ctx.encryptor.is_some());
    let legs = open_legs(ctx, &catalog::object_key(&ctx.id, &object), &mut report).await;
    if legs.is_empty() {
        report.error = Some(not_stored(&report.target_errors));
        return report;
    }

    let (tx, rx) = mpsc::channel(pipeline::CHANNEL_CHUNKS);
    let (commit_tx, commit_rx) = oneshot::channel::<bool>();
    let fan = tokio::spawn(pipeline::fan_out(
        rx,
        legs,
        async move { commit_rx.await.unwrap_or(false) },
        Pace::Backpressure,
        ctx.env.cancel.clone(),
    ));
    let (raw_tx, raw_rx) = mpsc::channel::<bytes::Bytes>(RAW_CHANNEL);
    let compressor = spawn_compressor(ctx, raw_rx, tx);
    ctx.env.progress.note(&format!(
        "{}: running the dump in container {}",
        src.name, spec.container
    ));
    let exec = ExecSpec {
        argv: spec.command.to_argv(),
        user: None,
        env: vec![],
        timeout: spec.timeout,
    };
    // The command is journaled once the engine created it and before it starts (as a hook's is): a run killed
    // while it runs leaves `recover` its id to kill it by. A journal that cannot be written refuses the start.
    let journal = ctx.quiescer.journal();
    let exec_seq = std::sync::Mutex::new(None);
    let note = |exec_id: &str| -> Result<(), String> {
        let seq = journal
            .will_create(&quiesce::Leftover::DumpExec {
                container_id: spec.container_id.clone(),
                container: spec.container.clone(),
                exec_id: exec_id.to_string(),
                command: spec.command.to_string(),
            })
            .map_err(|e| e.to_string())?;
        *exec_seq.lock().unwrap_or_else(|p| p.into_inner()) = Some(seq);
        Ok(())
    };
    let started = Instant::now();
    let outcome = ctx
        .env
        .engine
        .exec_noted(
            &spec.container_id,
            &exec,
            ExecStdout::Stream(raw_tx),
            &ctx.env.cancel,
            &note,
        )
        .await;
    // Ended (or killed at its timeout or on a signal by the exec itself): nothing left to recover.
    if let Some(seq) = exec_seq.into_inner().unwrap_or_else(|p| p.into_inner()) {
        journal.removed(seq);
    }
    // The exec dropped its sender: the compressor sees the end of the stream and finishes.
    let compressed = compressor.await;
    report.read_ms = started.elapsed().as_millis() as u64;

    let what = format!("the dump in container {} (`{}`)", spec.container, spec.from);
    let verdict: Result<(Compressed, Option<i64>), String> = match outcome {
        Err(e) => Err(format!("{what} could not be run: {e}")),
        Ok(o) => {
            if !o.stderr.is_empty() {
                let text = format!("{}: {what} said:\n{}", src.name, o.stderr.text());
                if o.success() {
                    ctx.env.progress.note(&text);
                } else {
                    ctx.env.progress.warn(&text);
                }
            }
            match (&o.end, o.exit_code) {
                (ExecEnd::Exited, Some(0)) => match compressed {
                    Ok(Ok(c)) => Ok((c, o.exit_code)),
                    Ok(Err(e)) => Err(format!("storing the dump: {e}")),
                    Err(e) => Err(format!(
                        "internal error: the compressor did not finish: {e}"
                    )),
                },
                (ExecEnd::Exited, Some(code)) => Err(format!(
                    "{what} failed with exit code {code}{}; nothing was stored for it",
                    said(&o.stderr)
                )),
                (ExecEnd::Exited, None) => Err(format!(
                    "{what} ended without an exit code; nothing was stored for it"
                )),
                (ExecEnd::TimedOut(k), _) => Err(format!(
                    "{what} timed out after {} (label {}): {k}; nothing was stored for it",
                    humantime::format_duration(spec.timeout),
                    crate::dump::LABEL_DUMP_TIMEOUT
                )),
                (ExecEnd::Cancelled(k), _) => {
                    Err(format!("{what} was interrupted: {k}; nothing was stored"))
                }
            }
        }
    };
    // Publish the uploads only for a whole dump; otherwise every one is aborted.
    let _ = commit_tx.send(verdict.is_ok());
    let legs = fan.await.unwrap_or_default();
    let legs = settle_legs(ctx, legs, &mut report);
    let ((sha256, size, dump_bytes), exit_code) = match verdict {
        Ok(v) => v,
        Err(e) => {
            report.error = Some(pack_failed(ctx, e, false, &legs, &mut report));
            return report;
        }
    };
    report.counts = Counts {
        entries: 1,
        files: 1,
        bytes: dump_bytes,
        ..Counts::default()
    };
    report.stored_bytes = size;
    if dump_bytes == 0 {
        let w = "the dump is empty: the command wrote nothing to stdout".to_string();
        ctx.env.progress.reported(&format!("{}: {w}", src.name));
        report.warnings.push(w);
    }
    let record = spec.record(exit_code, report.read_ms, dump_bytes);
    for l in legs {
        let i = l.target;
        match l.result {
            Ok(_) => {
                report.records.insert(
                    i,
                    SourceRecord {
                        name: src.name.clone(),
                        kind: src.kind,
                        path: String::new(),
                        driver: None,
                        driver_opts: BTreeMap::new(),
                        labels: BTreeMap::new(),
                        object: object.clone(),
                        counts: report.counts.clone(),
                        stored_bytes: size,
                        sha256: sha256.clone(),
                        containers: report.containers.clone(),
                        read_ms: report.read_ms,
                        warnings: report.warnings.clone(),
                        not_archived: vec![],
                        not_archived_count: 0,
                        hooks: vec![],
                        dump: Some(record.clone()),
                        services: vec![],
                        read_via: None,
                    },
                );
            }
            Err(e) => {
                report
                    .target_errors
                    .insert(ctx.targets.names[i].clone(), e.to_string());
            }
        }
    }
    report.status = status(&mut report);
    report
}

/// The last line of a failed dump's stderr, short, for its error (the whole of it is in the log).
fn said(stderr: &crate::docker::Captured) -> String {
    let text = stderr.text();
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => {
            let line: String = line.trim().chars().take(200).collect();
            format!(": {line}")
        }
        None => String::new(),
    }
}

/// Compress (and encrypt) the dump's raw chunks from `raw` into the pipeline's channel `tx`, on a blocking thread.
fn spawn_compressor(
    ctx: &RunCtx<'_>,
    mut raw: mpsc::Receiver<bytes::Bytes>,
    tx: mpsc::Sender<bytes::Bytes>,
) -> tokio::task::JoinHandle<std::io::Result<Compressed>> {
    use std::io::Write;
    let level = ctx.archive.zstd_level;
    let threads = ctx.archive.zstd_threads;
    let progress = ctx.env.progress.clone();
    let enc = ctx.encryptor.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<Compressed> {
        let sink = ChunkSink::new(tx);
        let stored = crypto::StoredWriter::new(sink, enc.as_ref())?;
        let mut zw = archive::compress::zstd_encoder(stored, level, threads)?;
        let mut dump_bytes = 0u64;
        while let Some(chunk) = raw.blocking_recv() {
            zw.write_all(&chunk)?;
            dump_bytes += chunk.len() as u64;
            progress.inc(chunk.len() as u64);
        }
        let stored = zw.finish()?;
        let sink = stored.finish()?;
        let (sha, size) = sink.finish()?;
        Ok((sha, size, dump_bytes))
    })
}
