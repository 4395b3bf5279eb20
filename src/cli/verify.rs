//! `voltar verify`: flags, the result lines, the exit code.

use anyhow::Result;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::progress::Progress;
use crate::verify::{self, ObjectCheck, VerifyReport, VerifyRequest};

use super::{chain, emit, human, KeyArgs, ReadTargetsArgs, EXIT_FAILED, EXIT_OK, JOB_HELP};

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Backup id or `latest` (default: latest).
    pub backup: Option<String>,
    /// Verify every backup in each target.
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
    pub target: ReadTargetsArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// Verify in each target (`--target` values, else every target of the job). A target that cannot be read or
/// has nothing to verify is reported beside the others (exit 1); exit 2 when none could be verified.
pub async fn command(
    config: &Config,
    args: VerifyArgs,
    json: bool,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<i32> {
    let targets = super::resolve_targets(config, args.job.as_deref(), &args.target.as_list())?;
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for target in targets {
        let name = target.name.clone();
        let req = VerifyRequest {
            target,
            backup: args.backup.clone(),
            all: args.all,
            restore_test: args.restore_test,
            sources: args.sources.clone(),
            identities: args.keys.identities.clone(),
            passphrase_file: args.keys.passphrase_file.clone(),
        };
        match verify::run(config, &req, progress.clone(), cancel.clone()).await {
            Ok(report) => outcomes.push(Ok(report)),
            Err(e) if cancel.is_cancelled() => return Err(e),
            Err(e) => {
                outcomes.push(Err((name, chain(&e))));
                errors.push(e);
            }
        }
    }
    if outcomes.iter().all(Result::is_err) {
        return Err(super::catalog::none_readable(errors));
    }
    let doc = VerifyOut::new(&outcomes);
    emit(json, &doc, |_| render_all(&outcomes));
    let ok = outcomes
        .iter()
        .all(|o| o.as_ref().is_ok_and(VerifyReport::ok));
    Ok(if ok { EXIT_OK } else { EXIT_FAILED })
}

/// Each target's report, or the target's name and why it could not be verified.
type Outcome = Result<VerifyReport, (String, String)>;

/// `verify --json`: the targets (with the error of each that could not be verified), then every check and
/// problem, each with its target.
#[derive(serde::Serialize)]
struct VerifyOut<'a> {
    targets: Vec<Verified<'a>>,
    checks: Vec<Checked<'a>>,
    problems: Vec<Problem<'a>>,
}

#[derive(serde::Serialize)]
struct Verified<'a> {
    target: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct Checked<'a> {
    target: &'a str,
    #[serde(flatten)]
    check: &'a ObjectCheck,
}

#[derive(serde::Serialize)]
struct Problem<'a> {
    target: &'a str,
    problem: &'a str,
}

impl<'a> VerifyOut<'a> {
    fn new(outcomes: &'a [Outcome]) -> VerifyOut<'a> {
        let reports = || outcomes.iter().filter_map(|o| o.as_ref().ok());
        VerifyOut {
            targets: outcomes
                .iter()
                .map(|o| match o {
                    Ok(r) => Verified {
                        target: &r.target,
                        error: None,
                    },
                    Err((target, e)) => Verified {
                        target,
                        error: Some(e),
                    },
                })
                .collect(),
            checks: reports()
                .flat_map(|r| {
                    r.checks.iter().map(|check| Checked {
                        target: &r.target,
                        check,
                    })
                })
                .collect(),
            problems: reports()
                .flat_map(|r| {
                    r.problems.iter().map(|p| Problem {
                        target: &r.target,
                        problem: p,
                    })
                })
                .collect(),
        }
    }
}

/// Each target's lines in turn; a target that could not be verified in one `FAILED` line.
fn render_all(outcomes: &[Outcome]) -> String {
    outcomes
        .iter()
        .map(|o| match o {
            Ok(r) => render(r),
            Err((target, e)) => format!("FAILED  cannot verify {target}: {e}\n"),
        })
        .collect()
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
