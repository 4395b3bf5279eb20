//! `voltar verify`: prove that backups are complete and restorable, without touching any volume.
//!
//! For each source of each chosen backup: stream the stored object, recompute its sha256 and size, decrypt
//! (age checks every chunk and the final one), fully decompress (zstd frame checksum), walk every tar entry and
//! compare entry counts and sizes with the manifest. An archive cut at a 512-byte boundary reads as a clean tar
//! end — the sha256 and counts catch it. Encrypted manifests also have their seal checked (see `crypto`).
//!
//! `--restore-test` additionally restores each source into a scratch volume (created and removed here) through
//! the same code path as `voltar restore`, and walks the restored tree comparing it with the manifest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::archive::Counts;
use crate::catalog::{self, Manifest, SourceKind, SourceRecord};
use crate::config::{Config, Target};
use crate::crypto::Decryptor;
use crate::progress::Progress;
use crate::readback::{
    self, count_diff, Entries, ProgressReader, RawError, RestoreError, WalkError,
};
use crate::restore::{fetch_and_unpack, unpack_until_cancelled};
use crate::storage::Storage;

/// `voltar verify`: which backups of which target, and the keys for encrypted ones.
#[derive(Clone, Debug)]
pub struct VerifyRequest {
    pub target: Target,
    /// Backup id or `latest` (default: latest).
    pub backup: Option<String>,
    /// Every backup in the target.
    pub all: bool,
    /// Also restore each source into a scratch volume and check the restored tree.
    pub restore_test: bool,
    /// Only these sources; with `latest`, the newest backup that holds them.
    pub sources: Vec<String>,
    pub identities: Vec<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ObjectCheck {
    pub backup: String,
    pub source: String,
    pub object: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    pub stored_bytes: u64,
    /// Decrypted, decompressed and walked. False: only the stored bytes (size, sha256) were checked, because the
    /// backup is encrypted and no key was given.
    pub content_checked: bool,
    pub restore_tested: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyReport {
    pub target: String,
    pub checks: Vec<ObjectCheck>,
    /// Problems not tied to one object (unreadable manifests, bad seals).
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.checks.iter().all(|c| c.ok)
    }
}

/// Check one stored object against its manifest entry: sha256, size, decryption, decompression, counts. Every
/// problem found is listed, each naming the object by its key.
pub async fn check_object(
    store: Arc<dyn Storage>,
    manifest: &Manifest,
    src: &SourceRecord,
    decryptor: Arc<Decryptor>,
    progress: Progress,
) -> Vec<String> {
    if src.kind == SourceKind::Dump {
        return check_dump(store, manifest, src, decryptor, progress).await;
    }
    let rb = match readback::read(
        store,
        manifest,
        src,
        decryptor,
        Entries::Scan,
        true,
        progress,
    )
    .await
    {
        Ok(rb) => rb,
        Err(e) => {
            return vec![format!(
                "{}: {e}",
                catalog::object_key(&manifest.id, &src.object)
            )]
        }
    };
    if let Some(why) = &rb.unread {
        return vec![format!("{}: {}", rb.key, readback::not_read(why))];
    }
    let mut problems = Vec::new();
    match rb.walked {
        Ok(w) => {
            if let Some(c) = w.counts().filter(|c| **c != src.counts) {
                problems.push(format!(
                    "archive content does not match the manifest: {}",
                    count_diff(&src.counts, c)
                ));
            }
        }
        // The object is named once, by its key, when the problems are reported.
        Err(WalkError::Open(RestoreError::Crypto { source, .. })) => {
            problems.push(source.to_string())
        }
        Err(WalkError::Open(RestoreError::Archive { source, .. })) => {
            problems.push(source.to_string())
        }
        Err(WalkError::Open(other)) => problems.push(other.to_string()),
        Err(WalkError::Entries(e)) => problems.push(e.to_string()),
        Err(WalkError::Trailer(e)) => problems.push(format!("corrupt archive: {e}")),
    }
    match rb.digest {
        Some(Ok((sha, size))) => problems.extend(digest_problems(&sha, size, src)),
        Some(Err(e)) => problems.push(format!("reading: {e}")),
        None => {}
    }
    problems
        .into_iter()
        .map(|m| format!("{}: {m}", rb.key))
        .collect()
}

/// A dump is not a tar: check the stored bytes (size, sha256), that it decrypts and decompresses to its last
/// byte, and that it decompresses to the dump's recorded size.
async fn check_dump(
    store: Arc<dyn Storage>,
    manifest: &Manifest,
    src: &SourceRecord,
    decryptor: Arc<Decryptor>,
    progress: Progress,
) -> Vec<String> {
    let key = catalog::object_key(&manifest.id, &src.object);
    let rb = match readback::read_raw(
        store,
        manifest,
        src,
        decryptor,
        Box::new(std::io::sink()),
        true,
        progress,
    )
    .await
    {
        Ok(rb) => rb,
        Err(e) => return vec![format!("{key}: {e}")],
    };
    if let Some(why) = &rb.unread {
        return vec![format!("{key}: {}", readback::not_read(why))];
    }
    let mut problems = Vec::new();
    match rb.copied {
        Ok(n) if n != src.counts.bytes => problems.push(format!(
            "the dump decompresses to {n} bytes, the manifest says {}",
            src.counts.bytes
        )),
        Ok(_) => {}
        Err(RawError::Open(RestoreError::Crypto { source, .. })) => {
            problems.push(source.to_string())
        }
        Err(RawError::Open(RestoreError::Archive { source, .. })) => {
            problems.push(source.to_string())
        }
        Err(RawError::Open(other)) => problems.push(other.to_string()),
        Err(RawError::Read(e)) | Err(RawError::Write(e)) => {
            problems.push(format!("corrupt dump: {e}"))
        }
    }
    match rb.digest {
        Some(Ok((sha, size))) => problems.extend(digest_problems(&sha, size, src)),
        Some(Err(e)) => problems.push(format!("reading: {e}")),
        None => {}
    }
    problems
        .into_iter()
        .map(|m| format!("{key}: {m}"))
        .collect()
}

/// Without the key: read the stored object to its end and check its size and sha256 against the manifest.
/// Dropping the future stops the read at its next chunk, as [`readback::read`].
async fn check_stored(
    store: Arc<dyn Storage>,
    manifest: &Manifest,
    src: &SourceRecord,
    progress: Progress,
) -> Vec<String> {
    let key = catalog::object_key(&manifest.id, &src.object);
    let stream = match store.get(&key).await {
        Ok(s) => s,
        Err(e) => return vec![format!("{key}: {e}")],
    };
    // The same hashing as a keyed read (`pipeline::hash_aside`), off the async runtime's threads.
    let stop = crate::pipeline::StopFlag::new();
    let digest = async {
        let (stream, digest) = crate::pipeline::hash_aside(stream)?;
        let rest = ProgressReader::new(crate::pipeline::blocking_reader(stream), progress)
            .stopped_by(stop.flag());
        tokio::task::spawn_blocking(move || digest.finish(rest))
            .await
            .map_err(std::io::Error::other)?
    };
    match digest.await {
        Ok((sha, size)) => digest_problems(&sha, size, src)
            .into_iter()
            .map(|p| format!("{key}: {p}"))
            .collect(),
        // Only reading fails here (the target stopped answering): nothing is known of the stored bytes.
        Err(e) => vec![format!("{key}: {}", readback::not_read(&e.to_string()))],
    }
}

/// How the stored object's size and sha256 differ from what the manifest recorded.
fn digest_problems(sha: &str, size: u64, src: &SourceRecord) -> Vec<String> {
    let mut problems = Vec::new();
    if size != src.stored_bytes {
        problems.push(format!(
            "size {size} bytes, manifest says {}",
            src.stored_bytes
        ));
    }
    if sha != src.sha256 {
        problems.push(format!(
            "sha256 {sha} does not match the manifest ({})",
            src.sha256
        ));
    }
    problems
}

/// Walk a restored tree and compare it with the manifest's counts. Hardlinked files count once as a file and
/// once per extra link; bytes count each inode once, as the archive does.
pub fn check_tree(root: &Path, expected: &Counts) -> Vec<String> {
    let found = match crate::archive::count_tree(root) {
        Ok(c) => c,
        Err(e) => return vec![format!("the restored tree: {e}")],
    };
    // The archive may carry the root directory itself as an entry.
    let mut exp = expected.clone();
    if exp.dirs == found.dirs + 1 && exp.entries == found.entries + 1 {
        exp.dirs -= 1;
        exp.entries -= 1;
    }
    if exp != found {
        vec![format!(
            "restored tree differs from the manifest: {}",
            count_diff(&exp, &found)
        )]
    } else {
        vec![]
    }
}

/// What every backup of one verify run is checked with: the opened target, the keys, the engine for
/// `--restore-test`, progress.
struct VerifyCtx {
    store: Arc<dyn Storage>,
    decryptor: Arc<Decryptor>,
    engine: Option<crate::docker::Engine>,
    progress: Progress,
    /// Ctrl-C / SIGTERM: the check of an object is dropped at once (nothing to put back), a restore test stops
    /// its extraction at the next entry and removes its scratch volume.
    cancel: CancellationToken,
}

/// Check the chosen backups; problems are in the report, `Err` is a fatal or usage error.
pub async fn run(
    config: &Config,
    args: &VerifyRequest,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<VerifyReport> {
    let store = crate::storage::open(&args.target)
        .await
        .with_context(|| format!("opening target {}", args.target.name))?;
    let listing = catalog::list(store.as_ref()).await?;
    let decryptor = Arc::new(Decryptor::load(
        &args.identities,
        args.passphrase_file.as_deref(),
    )?);
    let mut report = VerifyReport {
        target: store.describe(),
        checks: vec![],
        problems: vec![],
    };
    for (id, e) in &listing.unreadable {
        report.problems.push(format!("backup {id}: {e}"));
    }
    let chosen = choose(&listing, args, &mut report)?;
    if chosen.is_empty() && report.problems.is_empty() {
        bail!("no backups in {} to verify", store.describe());
    }
    // A restore test decrypts: without the key it is the usage error restore gives (exit 2), not a finding.
    if let Some(m) = chosen
        .iter()
        .find(|m| args.restore_test && m.encryption.is_some() && decryptor.is_empty())
    {
        return Err(crate::crypto::CryptoError::NeedKey {
            what: m.id.to_string(),
        }
        .into());
    }
    let engine = if args.restore_test {
        Some(crate::docker::Engine::connect(config.docker_host.as_deref()).await?)
    } else {
        None
    };
    let ctx = VerifyCtx {
        store,
        decryptor,
        engine,
        progress,
        cancel,
    };
    for m in &chosen {
        verify_backup(&ctx, args, m, &mut report).await;
        // What an interrupted check found is not a finding.
        if ctx.cancel.is_cancelled() {
            bail!("interrupted");
        }
    }
    ctx.progress.finish();
    Ok(report)
}

/// The backups to check: all of them, or the one the request names (default `latest`). One whose manifest
/// cannot be read is already among the report's problems.
fn choose(
    listing: &catalog::Listing,
    args: &VerifyRequest,
    report: &mut VerifyReport,
) -> Result<Vec<Manifest>> {
    if args.all {
        return Ok(listing.backups.clone());
    }
    let spec = args.backup.clone().unwrap_or_else(|| "latest".into());
    if listing.unreadable.iter().any(|(id, _)| id.as_str() == spec) {
        // Already in the problems: its manifest cannot be read.
        return Ok(vec![]);
    }
    match catalog::resolve(listing, &spec, None, &args.sources) {
        Ok(m) => Ok(vec![m.clone()]),
        // Nothing to pick because manifests are unreadable: report those (exit 1), not a usage error.
        Err(e) if !report.problems.is_empty() => {
            report.problems.push(e.to_string());
            Ok(vec![])
        }
        Err(e) => Err(e.into()),
    }
}

/// Check one backup: its keys and seal, the `--source` names it lacks, then each (chosen) source's object, and
/// with `--restore-test` a restore of each object that passed.
async fn verify_backup(
    ctx: &VerifyCtx,
    args: &VerifyRequest,
    m: &Manifest,
    report: &mut VerifyReport,
) {
    // Encrypted, and no key (the backup host holds only public keys): the stored bytes can still be checked.
    let keyless = m.encryption.is_some() && ctx.decryptor.is_empty();
    if m.encryption.is_some() && !keyless {
        if let Err(e) = ctx.decryptor.check_seal(m) {
            report.problems.push(e.to_string());
            return;
        }
    }
    for n in args.sources.iter().filter(|n| m.source(n).is_none()) {
        report
            .problems
            .push(format!("backup {}: has no source `{n}`", m.id));
    }
    for src in m
        .sources
        .iter()
        .filter(|s| args.sources.is_empty() || args.sources.contains(&s.name))
    {
        ctx.progress.phase(&format!("verify {} {}", m.id, src.name));
        ctx.progress.expect_bytes(Some(src.stored_bytes));
        let store = ctx.store.clone();
        let progress = ctx.progress.clone();
        let check = async {
            if keyless {
                check_stored(store, m, src, progress).await
            } else {
                check_object(store, m, src, ctx.decryptor.clone(), progress).await
            }
        };
        // A read-only check has nothing to put back: on a signal it is dropped, which stops its read at the next
        // chunk (and a wait on the store at once).
        let mut problems = tokio::select! {
            p = check => p,
            _ = ctx.cancel.cancelled() => return,
        };
        let mut tested = false;
        // A dump has no tree to restore into a scratch volume: its check above decompressed it whole.
        let testable = src.kind != SourceKind::Dump;
        if let (Some(engine), true, true) = (&ctx.engine, problems.is_empty(), testable) {
            tested = true;
            let store = ctx.store.clone();
            problems.extend(restore_test(ctx, engine, store, m, src).await);
            if ctx.cancel.is_cancelled() {
                return;
            }
        }
        report.checks.push(ObjectCheck {
            backup: m.id.to_string(),
            source: src.name.clone(),
            object: catalog::object_key(&m.id, &src.object),
            ok: problems.is_empty(),
            problems,
            stored_bytes: src.stored_bytes,
            content_checked: !keyless,
            restore_tested: tested,
        });
    }
}

/// Restore `src` into a scratch volume (named after it) and compare the tree with the manifest; the volume is
/// removed afterwards, also when Ctrl-C stopped the extraction.
async fn restore_test(
    ctx: &VerifyCtx,
    engine: &crate::docker::Engine,
    store: Arc<dyn Storage>,
    m: &Manifest,
    src: &SourceRecord,
) -> Vec<String> {
    let name = scratch_name(&src.name);
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("voltar.scratch".to_string(), "true".to_string());
    let vol = match engine
        .create_volume(&name, "local", &Default::default(), &labels)
        .await
    {
        Ok(v) => v,
        Err(e) => return vec![format!("creating scratch volume: {e}")],
    };
    let dest = vol.mountpoint.clone();
    let r = unpack_until_cancelled(&ctx.cancel, Default::default(), async |opts| {
        let (decryptor, progress) = (ctx.decryptor.clone(), ctx.progress.clone());
        fetch_and_unpack(store, m, src, decryptor, dest.clone(), opts, progress).await
    })
    .await;
    let problems = match r {
        Ok(_) => {
            let d = dest.clone();
            let counts = src.counts.clone();
            tokio::task::spawn_blocking(move || check_tree(&d, &counts))
                .await
                .unwrap_or_else(|e| vec![e.to_string()])
        }
        Err(e) => vec![format!("restore test: {e:#}")],
    };
    if let Err(e) = engine.remove_volume(&name).await {
        return [
            problems,
            vec![format!("removing scratch volume {name}: {e}")],
        ]
        .concat();
    }
    problems
}

/// A scratch volume's name: `voltar-verify-<source>-<time>-<random>`, the source's name (at most 64 characters of
/// it) with every character a volume name cannot hold made `_`, so `docker volume ls` shows what is tested.
fn scratch_name(source: &str) -> String {
    let safe: String = source
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "voltar-verify-{safe}-{}-{:08x}",
        Utc::now().format("%Y%m%d%H%M%S"),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::scratch_name;

    #[test]
    fn a_scratch_volume_is_named_after_its_source_in_characters_a_volume_name_allows() {
        let n = scratch_name("/srv/app data:v2");
        assert!(n.starts_with("voltar-verify-_srv_app_data_v2-"), "{n}");
        assert!(
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
            "{n}"
        );
        let long = scratch_name(&"x".repeat(300));
        assert!(
            long.starts_with(&format!("voltar-verify-{}-", "x".repeat(64))),
            "{long}"
        );
        assert!(!long.contains(&"x".repeat(65)), "{long}");
    }
}
