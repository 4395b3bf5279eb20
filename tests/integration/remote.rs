//! Issue 15: `DOCKER_HOST=ssh://user@host` like the docker CLI. A real `sshd` on loopback (its own host key and
//! authorized key, in a temporary directory) carries voltar's Engine API connections to `docker system
//! dial-stdio` on "the remote host" (this machine, so its volumes stay readable by path). A paused backup runs
//! through it end to end; a key the server refuses and a server that is not there are clear errors naming the
//! endpoint and what ssh said.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_docker;
use crate::support::{self, free_port, Cleanup, Out};

/// An sshd on 127.0.0.1 that lets root in with one key; stopped on drop.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Sshd {
    /// `None` (after saying so) when sshd is not installed; under CI that is a failure.
    fn start() -> Option<Sshd> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "sshd is missing (scripts/env.sh installs openssh-server)"
            );
            eprintln!("SKIPPING: sshd not installed (scripts/env.sh installs openssh-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        for key in ["host_key", "client_key", "stranger_key"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(key))
                .output()
                .expect("ssh-keygen");
            assert!(out.status.success(), "ssh-keygen: {out:?}");
        }
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        // The privilege separation directory sshd insists on.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let d = dir.path().display();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            ),
        )
        .unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sshd");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Sshd { dir, port, child })
    }

    fn host(&self) -> String {
        format!("ssh://root@127.0.0.1:{}", self.port)
    }

    /// `VOLTAR_SSH_COMMAND` with `key` (the test must not touch the user's known hosts or ssh config).
    fn ssh_command(&self, key: &str) -> String {
        format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o LogLevel=ERROR",
            self.dir.path().join(key).display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn voltar(host: &str, ssh: &str, state: &Path, args: &[&str]) -> (Out, Duration) {
    // A TMPDIR of the test's own, to see that the bridge's socket directory goes away.
    let tmp = state.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_voltar"))
        .args(args)
        .env("TMPDIR", &tmp)
        .env("DOCKER_HOST", host)
        .env("VOLTAR_SSH_COMMAND", ssh)
        .env("VOLTAR_STATE_DIR", state)
        .env_remove("VOLTAR_CONFIG")
        .env_remove("VOLTAR_LOG")
        .output()
        .expect("running voltar");
    (out.into(), start.elapsed())
}

#[test]
fn issue15_a_backup_over_ssh_pauses_and_resumes_through_the_remote_engine() {
    require_docker!();
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let mut c = Cleanup::default();
    let vol = c.volume("ssh");
    std::fs::write(
        support::mountpoint(&vol).join("greeting.txt"),
        b"over ssh\n",
    )
    .unwrap();
    let app = c.run(
        "ssh-app",
        &[
            "-v",
            &format!("{vol}:/data"),
            "--label",
            "voltar.quiesce=pause",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let target: PathBuf = dir.path().join("bk");
    let state = dir.path().join("state");
    let ssh = sshd.ssh_command("client_key");

    let (plan, _) = voltar(&sshd.host(), &ssh, &state, &["plan", "--only", &vol]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.contains(&app), "{plan:?}");

    let (out, _) = voltar(
        &sshd.host(),
        &ssh,
        &state,
        &[
            "--json",
            "backup",
            "--only",
            &vol,
            "-t",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let r: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let src = support::source(&r, &vol);
    assert_eq!(src["status"], "ok", "{out:?}");
    let held = support::container_record(src, &app);
    assert_eq!(held["action"], "pause", "{out:?}");
    assert_eq!(support::state(&app), "running");

    // What went over ssh is the real backup: restore it beside and read the file.
    let back = dir.path().join("back");
    let (restored, _) = voltar(
        &sshd.host(),
        &ssh,
        &state,
        &[
            "restore",
            "latest",
            "--source",
            &vol,
            "-t",
            target.to_str().unwrap(),
            "--to-dir",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(restored.code, 0, "{restored:?}");
    assert_eq!(
        std::fs::read(back.join("greeting.txt")).unwrap(),
        b"over ssh\n"
    );
    // The bridge's socket directories (in voltar's TMPDIR) are gone with the runs.
    let left: Vec<_> = std::fs::read_dir(state.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn issue15_ssh_failures_say_what_ssh_said_and_name_the_endpoint() {
    require_docker!();
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    // A key the server does not know.
    let (out, took) = voltar(
        &sshd.host(),
        &sshd.ssh_command("stranger_key"),
        &state,
        &["plan"],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains(&sshd.host()), "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");

    // Nobody listening.
    let dead = format!("ssh://root@127.0.0.1:{}", free_port());
    let (out, took) = voltar(&dead, &sshd.ssh_command("client_key"), &state, &["plan"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains(&dead), "{out:?}");
    assert!(out.stderr.contains("Connection refused"), "{out:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}
