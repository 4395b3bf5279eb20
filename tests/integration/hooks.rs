//! Exec hooks against the real Docker Engine (issue 13, "Exec hooks"; acceptance rows 1, 6, 16, 18, 26, 27):
//! the exec primitive (capture, stream, exit code, timeout that kills), container pre/post-backup hooks through
//! the `voltar` binary, offen/docker-volume-backup labels, and host hooks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use voltar::docker::{Engine, ExecEnd, ExecSpec, ExecStdout, Killed};

use crate::require_docker;
use crate::support::{self, docker, docker_raw, source, Cleanup, Out};

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

async fn engine() -> Engine {
    Engine::connect(None)
        .await
        .expect("connect to the docker engine")
}

fn spec(argv: &[&str], timeout: Duration) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        user: None,
        env: vec![],
        timeout,
    }
}

/// The command lines of the processes running in `container` (from the host's view, `docker top`).
fn processes(container: &str) -> Vec<String> {
    docker(&["top", container, "-o", "pid,args"])
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect()
}

// ------------------------------------------------------------------------------------------------------------
// The exec primitive

#[tokio::test]
async fn exec_captures_output_and_exit_code() {
    require_docker!();
    let mut c = Cleanup::default();
    let ctr = c.run("exec", &[]);
    let engine = engine().await;
    let cancel = CancellationToken::new();
    let mut s = spec(
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; echo \"$GREETING\"; exit 3",
        ],
        Duration::from_secs(30),
    );
    s.env = vec!["GREETING=hello".into()];
    let o = engine
        .exec(&ctr, &s, ExecStdout::Capture, &cancel)
        .await
        .unwrap();
    assert_eq!(o.end, ExecEnd::Exited);
    assert_eq!(o.exit_code, Some(3));
    assert!(!o.success());
    assert_eq!(o.stdout.text(), "out\nhello");
    assert_eq!(o.stderr.text(), "err");

    // Output beyond the cap is cut and said to be.
    let o = engine
        .exec(
            &ctr,
            &spec(
                &["sh", "-c", "yes x | head -c 100000"],
                Duration::from_secs(30),
            ),
            ExecStdout::Capture,
            &cancel,
        )
        .await
        .unwrap();
    assert!(o.success(), "{o:?}");
    assert_eq!(o.stdout.bytes.len(), voltar::docker::exec::CAPTURE_CAP);
    assert!(o.stdout.text().ends_with("bytes truncated"));

    // A user: busybox `id -u` as nobody.
    let mut s = spec(&["id", "-u"], Duration::from_secs(30));
    s.user = Some("65534".into());
    let o = engine
        .exec(&ctr, &s, ExecStdout::Capture, &cancel)
        .await
        .unwrap();
    assert_eq!(o.stdout.text(), "65534");
}

#[tokio::test]
async fn exec_streams_stdout_into_a_channel() {
    require_docker!();
    let mut c = Cleanup::default();
    let ctr = c.run("exec", &[]);
    let engine = engine().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let collect = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(b) = rx.recv().await {
            n += b.len();
        }
        n
    });
    let o = engine
        .exec(
            &ctr,
            &spec(
                &["sh", "-c", "head -c 3000000 /dev/zero; echo done >&2"],
                Duration::from_secs(60),
            ),
            ExecStdout::Stream(tx),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(o.success(), "{o:?}");
    assert!(o.stdout.is_empty());
    assert_eq!(o.stderr.text(), "done");
    assert_eq!(collect.await.unwrap(), 3_000_000);
}

#[tokio::test]
async fn exec_past_its_timeout_is_killed_and_gone_from_the_container() {
    require_docker!();
    let mut c = Cleanup::default();
    let ctr = c.run("exec", &[]);
    let engine = engine().await;
    let started = std::time::Instant::now();
    // A shell with a child: the whole tree must go, not just the shell.
    let o = engine
        .exec(
            &ctr,
            &spec(
                &["sh", "-c", "sleep 600 & sleep 601; echo never"],
                Duration::from_secs(2),
            ),
            ExecStdout::Capture,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        matches!(o.end, ExecEnd::TimedOut(Killed::Killed(n)) if n >= 2),
        "{o:?}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(!o.success());
    let left: Vec<String> = processes(&ctr)
        .into_iter()
        .filter(|p| p.contains("sleep 60"))
        .collect();
    assert!(left.is_empty(), "still running in {ctr}: {left:?}");
    assert_eq!(support::state(&ctr), "running");
}
