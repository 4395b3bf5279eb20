//! `voltar engine-mirror` (hidden): what a restore in place through the engine runs in a container of voltar's
//! own image, with the volumes mounted at `/voltar/src` and `/voltar/dst` (`archive::mirror`). Not for people: it
//! reads no config, talks to no engine, prints one line. `--probe` only says which voltar this is, so the restore
//! can check the image before it touches anything.

use std::path::PathBuf;

use clap::Args;

use super::{EXIT_FAILED, EXIT_OK};

use crate::docker::helper::MIRROR_PROBE_LINE;

#[derive(Debug, Args)]
pub struct EngineMirrorArgs {
    /// Print `voltar-engine-mirror <version>` and exit 0 (the image check before a restore).
    #[arg(long)]
    pub probe: bool,
    /// The tree to copy.
    #[arg(long, value_name = "DIR", default_value = "/voltar/src")]
    pub from: PathBuf,
    /// The directory made equal to it (its contents are replaced).
    #[arg(long, value_name = "DIR", default_value = "/voltar/dst")]
    pub to: PathBuf,
}

/// Run it: exit 0 when `to` equals `from` and is on disk; else one line on stderr and exit 1.
pub fn command(args: &EngineMirrorArgs) -> i32 {
    if args.probe {
        println!("{MIRROR_PROBE_LINE} {}", env!("CARGO_PKG_VERSION"));
        return EXIT_OK;
    }
    match crate::archive::mirror::mirror(&args.from, &args.to) {
        Ok(rep) => {
            println!(
                "mirrored {} into {}: {} entries, {} bytes ({} entries removed first)",
                args.from.display(),
                args.to.display(),
                rep.counts.entries,
                rep.counts.bytes,
                rep.removed
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!(
                "voltar engine-mirror: error: mirroring {} into {}: {}",
                args.from.display(),
                args.to.display(),
                crate::error_chain(&anyhow::Error::from(e))
            );
            EXIT_FAILED
        }
    }
}
