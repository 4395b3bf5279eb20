//! voltar — back up and restore Docker volumes.
//!
//! The crate is one library with a thin binary (`src/main.rs`). The data path and the module map are described in
//! `docs/architecture.md`; in short:
//!
//! * [`config`] turns TOML + environment into a validated [`config::Config`];
//! * [`docker`] is the only module that talks to the Docker Engine (bollard types never leave it);
//! * [`plan`] is pure: discovery + config → what to back up and which containers to quiesce ([`sizes`]: how big
//!   its sources are now, for `voltar plan`);
//! * [`quiesce`] pauses/stops containers with a journal so that they are always put back;
//! * [`archive`] packs a directory into PAX tar and unpacks archives safely;
//! * [`storage`] is a narrow object-store trait with `local` and `s3` backends;
//! * [`notify`] tells people about runs (healthchecks pings, webhooks, ntfy, e-mail), never failing them;
//! * [`catalog`] names objects and owns the manifest format;
//! * [`retention`] is pure: policy + backups + now → keep/delete with reasons;
//! * [`backup`], [`restore`], [`verify`], [`prune`] orchestrate one command each: a request in, a report out;
//! * [`check`] is `voltar config check`: what a run needs, checked before the night; [`target_check`] is
//!   `voltar target check`: a real round trip on one target, with the fix for what the store differs in;
//! * [`readback`] is the one verified read of a stored object (restore, verify, the dry-run listing, import);
//! * [`cli`] is the only face: flags → request, report → table or `--json`, exit codes.

pub mod archive;
pub mod backup;
pub mod buffers;
pub mod caps;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod docker;
pub mod dump;
pub mod hooks;
pub mod lock;
pub mod notify;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod prune;
pub mod quiesce;
pub mod readback;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod sizes;
pub mod storage;
pub mod target_check;
pub mod verify;

/// The version string recorded in manifests.
pub const TOOL: &str = concat!("voltar ", env!("CARGO_PKG_VERSION"));

/// Error and its causes on one line, without duplicates (thiserror `transparent` repeats messages).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
