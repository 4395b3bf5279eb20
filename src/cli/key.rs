//! `voltar key`: make an age identity for encrypted backups, and show the public key of one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{out, out_json, EXIT_OK};
use crate::crypto;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new age identity (X25519). Prints the public key to put in `[encryption] recipients`.
    /// Without --out the identity itself goes to stdout, in the format of `age-keygen`.
    Generate {
        /// Write the identity to this new file (mode 0600; an existing file is never overwritten).
        #[arg(short, long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the public key(s) of an age identity file (what `recipients` needs).
    Public {
        /// The identity file (AGE-SECRET-KEY-1… lines).
        #[arg(value_name = "FILE")]
        identity: PathBuf,
    },
}

pub fn command(cmd: KeyCommand, json: bool, quiet: bool) -> Result<i32> {
    match cmd {
        KeyCommand::Generate { out: file } => generate(file.as_deref(), json, quiet),
        KeyCommand::Public { identity } => {
            let keys = crypto::public_keys(&identity)?;
            if json {
                out_json(&serde_json::json!({ "public_keys": keys }));
            } else {
                out(&keys.iter().map(|k| format!("{k}\n")).collect::<String>());
            }
            Ok(EXIT_OK)
        }
    }
}

fn generate(file: Option<&Path>, json: bool, quiet: bool) -> Result<i32> {
    let (text, public) = crypto::identity_file_text(chrono::Utc::now());
    let Some(file) = file else {
        if json {
            out_json(&serde_json::json!({ "public_key": public, "identity": text }));
        } else {
            out(&text);
        }
        return Ok(EXIT_OK);
    };
    write_new_secret(file, &text)?;
    if json {
        out_json(&serde_json::json!({ "public_key": public, "identity_file": file }));
    } else {
        out(&format!("{public}\n"));
    }
    if !quiet && !json {
        eprintln!(
            "voltar: wrote the identity to {}; its public key (above) goes into [encryption] recipients.\n\
             Keep {} safe and away from the backups: without it they cannot be restored.",
            file.display(),
            file.display()
        );
    }
    Ok(EXIT_OK)
}

/// Create `path` (never replacing anything), owner-only, and make its content durable.
fn write_new_secret(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} already exists: voltar never overwrites a key file; choose another --out or remove it first",
                path.display()
            ),
            _ => anyhow::anyhow!("cannot create the identity file {}: {e}", path.display()),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing the identity file {}", path.display()))?;
    Ok(())
}
