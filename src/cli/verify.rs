//! `voltar verify`: flags, the result lines, the exit code.

use anyhow::Result;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::progress::Progress;
use crate::verify::{self, VerifyReport, VerifyRequest};

use super::{emit, human, KeyArgs, ReadTargetArgs, EXIT_FAILED, EXIT_OK, JOB_HELP};

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Backup id or `latest` (default: latest).
    pub backup: Option<String>,
    /// Verify every backup in the target.
    #[arg(long, conflicts_with = "backup")]
    pub all: bool,
    /// Also restore each source into a scratch volume and check the restored tree.
    #[arg(long)]
    pub restore_test: bool,
    /// Only these sources; with `latest`, the newest backup that holds them.
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    #[arg(long, value_name = "NAME", help = JOB_HELP)]
    pub job: Option<String>,
    #[command(flatten)]
    pub target: ReadTargetArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
}

pub async fn command(
    config: &Config,
    args: VerifyArgs,
    json: bool,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<i32> {
    let target =
        super::resolve_targets(config, args.job.as_deref(), &args.target.as_list())?.remove(0);
    let req = VerifyRequest {
        target,
        backup: args.backup,
        all: args.all,
        restore_test: args.restore_test,
        sources: args.sources,
        identities: args.keys.identities,
        passphrase_file: args.keys.passphrase_file,
    };
    let report = verify::run(config, &req, progress, cancel).await?;
    emit(json, &report, render);
    Ok(if report.ok() { EXIT_OK } else { EXIT_FAILED })
}

/// One line per object (`ok` or one `FAILED` line per problem), then the problems not tied to one object and a
/// summary line.
pub fn render(report: &VerifyReport) -> String {
    let mut out = String::new();
    for c in &report.checks {
        if c.ok {
            out.push_str(&format!(
                "ok      {} {} ({}){}\n",
                c.backup,
                c.source,
                human(c.stored_bytes),
                if c.restore_tested {
                    ", restore-tested"
                } else if !c.content_checked {
                    ", stored bytes only"
                } else {
                    ""
                }
            ));
        } else {
            for p in &c.problems {
                out.push_str(&format!("FAILED  {} {}: {p}\n", c.backup, c.source));
            }
        }
    }
    for p in &report.problems {
        out.push_str(&format!("FAILED  {p}\n"));
    }
    if report.checks.iter().any(|c| !c.content_checked) {
        out.push_str(
            "encrypted backups: size and sha256 of the stored objects checked; content not checked \
             (pass --identity FILE or --passphrase-file FILE to decrypt and check it)\n",
        );
    }
    let bad = report.checks.iter().filter(|c| !c.ok).count() + report.problems.len();
    out.push_str(&format!(
        "{} object(s) checked in {}, {} problem(s)\n",
        report.checks.len(),
        report.target,
        bad
    ));
    out
}
