//! `voltar target check NAME|URL`: run [`crate::target_check`] and render its steps as a table (each failed
//! step with its fix) or one `--json` document; exit 0 when no step failed, 1 when one did. An unknown target
//! name or a bad URL is the usual fatal error (exit 2).

use anyhow::Result;
use clap::Subcommand;

use super::{out, out_json, EXIT_FAILED, EXIT_OK};
use crate::config::Config;
use crate::target_check::{Status, TargetCheck};

#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// A real round trip on a target: a multipart upload of a few parts, read back and compared by sha256,
    /// listed, deleted, confirmed gone, and an aborted upload that must leave nothing. Says what S3-compatible
    /// stores differ in (checksums, part limits, Object Lock, addressing) with the config line that fixes each.
    /// Exit 0 when every step passed, 1 when one failed.
    Check {
        /// The target: the name of a configured [target.NAME], a directory, file:///dir or s3://bucket/prefix
        /// (with ?endpoint=…&path-style=…&region=… for an S3-compatible store).
        #[arg(value_name = "NAME|URL")]
        target: String,
    },
}

pub(super) async fn command(config: &Config, cmd: TargetCommand, json: bool) -> Result<i32> {
    match cmd {
        TargetCommand::Check { target } => {
            let configured = config.targets.contains_key(&target);
            let t = config.target_arg(&target)?;
            let report = crate::target_check::run(&t, configured).await;
            if json {
                out_json(&report);
            } else {
                out(&render(&report));
            }
            Ok(if report.ok { EXIT_OK } else { EXIT_FAILED })
        }
    }
}

fn render(r: &TargetCheck) -> String {
    let mut text = format!("target {}: {}\n", r.target, r.location);
    let width = r
        .steps
        .iter()
        .map(|s| s.step.chars().count())
        .max()
        .unwrap_or(0)
        .max("STEP".len());
    text.push_str(&format!("{:<width$}  {:<7}  DETAIL\n", "STEP", "RESULT"));
    for s in &r.steps {
        let status = match s.status {
            Status::Ok => "ok",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
            Status::Info => "info",
        };
        text.push_str(&format!("{:<width$}  {status:<7}  {}\n", s.step, s.detail));
        if let Some(fix) = &s.fix {
            text.push_str(&format!("{:<width$}  {:<7}  fix: {fix}\n", "", ""));
        }
    }
    let failed = r
        .steps
        .iter()
        .filter(|s| s.status == Status::Failed)
        .count();
    if failed == 0 {
        text.push_str("all steps passed\n");
    } else {
        text.push_str(&format!("{failed} step(s) FAILED\n"));
    }
    text
}
