//! `voltar config check`: run [`crate::check`] and render its verdicts, one line each (`ok` / `FAILED: …`) or one
//! `--json` document; exit 0 when every check passed, 1 when any failed. A config that does not load never gets
//! here: it is the usual fatal error (exit 2), naming the key.

use anyhow::Result;
use clap::Subcommand;

use super::{out, out_json, EXIT_FAILED, EXIT_OK};
use crate::config::{Config, Job};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check everything the next run needs: the config, secret files, encryption, the engine, a test write to
    /// every target and that each job selects something. Prints what each job would do; exit 1 on any problem.
    Check {
        /// Check only this job (and its targets), as configured in [job.NAME]; default: every job.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
    },
}

pub(super) async fn command(config: &Config, cmd: ConfigCommand, json: bool) -> Result<i32> {
    match cmd {
        ConfigCommand::Check { job } => {
            let jobs: Vec<&Job> = match &job {
                Some(name) => vec![config.job(Some(name))?],
                None => config.jobs.values().collect(),
            };
            let report = crate::check::run(config, &jobs, chrono::Utc::now()).await;
            if json {
                out_json(&report);
            } else {
                let mut text = String::new();
                for c in &report.checks {
                    if c.ok {
                        text.push_str(&format!("ok      {:<24} {}\n", c.check, c.detail));
                    } else {
                        text.push_str(&format!("FAILED  {:<24} {}\n", c.check, c.detail));
                    }
                }
                let failed = report.checks.iter().filter(|c| !c.ok).count();
                if failed == 0 {
                    text.push_str("all checks passed\n");
                } else {
                    text.push_str(&format!("{failed} check(s) FAILED\n"));
                }
                out(&text);
            }
            Ok(if report.ok { EXIT_OK } else { EXIT_FAILED })
        }
    }
}
