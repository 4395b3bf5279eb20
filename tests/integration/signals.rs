//! Issue 8: SIGINT/SIGTERM cut retries short in every command. A `list` against an S3 endpoint that is dead
//! (connection refused) or hung (accepts and never answers) ran for the whole retry deadline (295 s) after
//! `timeout 10` sent SIGTERM, and said it had resumed containers. Now it stops within seconds, with exit 143 and
//! no word about containers or backups.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, Out};

/// Run `voltar <args>` against `endpoint`, send SIGTERM after `after`, and return what it said and how long it
/// took from the signal to its exit.
fn term_after(endpoint: &str, args: &[&str], after: Duration) -> (Out, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("voltar"))
        .args(args)
        .env_remove("VOLTAR_CONFIG")
        .env("VOLTAR_STATE_DIR", dir.path().join("state"))
        .env("HOME", dir.path())
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    assert!(
        child.try_wait().unwrap().is_none(),
        "voltar {args:?} ended before the signal: the endpoint should keep it waiting"
    );
    let sent = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = sent + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("voltar {args:?} still running 60 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = sent.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let out = Out {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    };
    (out, took)
}

fn check(out: &Out, took: Duration) {
    assert_eq!(out.code, 143, "{out:?}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} after SIGTERM: {out:?}"
    );
    let all = out.all();
    assert!(
        !all.contains("container") && !all.contains("committed"),
        "read-only commands say nothing about containers or backups: {out:?}"
    );
    assert!(all.contains("interrupted"), "{out:?}");
}

#[test]
fn issue8_sigterm_stops_list_against_a_hung_endpoint_within_seconds() {
    // Accepts connections (the kernel completes the handshake) and never answers.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = format!("http://{}", hung.local_addr().unwrap());
    for cmd in [&["list"][..], &["prune", "--keep-last", "1"][..]] {
        let mut args = cmd.to_vec();
        args.extend(["-t", "s3://bucket/prefix"]);
        let (out, took) = term_after(&ep, &args, Duration::from_secs(3));
        check(&out, took);
    }
    drop(hung);
}

#[test]
fn issue8_sigterm_stops_list_against_a_dead_endpoint_within_seconds() {
    // Nothing listens there: every attempt is refused and retried with backoff. An endpoint that never answered
    // gets the target's `check-timeout` (5 s by default, after which `list` fails by itself: see
    // `s3::an_endpoint_that_never_answered_fails_list_within_the_check_timeout`); a long one keeps it retrying
    // here, so that the signal is what ends it.
    let port = support::free_port();
    let ep = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("voltar.toml");
    std::fs::write(
        &cfg,
        "[target.dead]\ntype = \"s3\"\nbucket = \"bucket\"\nprefix = \"prefix\"\ncheck-timeout = \"5m\"\n",
    )
    .unwrap();
    let (out, took) = term_after(
        &ep,
        &["-c", cfg.to_str().unwrap(), "list", "-t", "dead"],
        Duration::from_secs(3),
    );
    check(&out, took);
}
