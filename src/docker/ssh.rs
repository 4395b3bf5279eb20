//! `DOCKER_HOST=ssh://[user@]host[:port][/socket]`, as the docker CLI does it: each connection to the engine is one
//! `ssh … docker system dial-stdio` process on the remote host, its stdin and stdout carrying the API's HTTP.
//!
//! bollard speaks HTTP over a Unix socket, so the bridge listens on one in a private temporary directory (0700)
//! and starts an `ssh` process for every connection bollard opens. The system `ssh` does the rest: the user's
//! `~/.ssh/config`, keys and agent, known hosts. It runs with `BatchMode=yes` (a backup from cron has nobody to
//! type a password) and a connect timeout. `VOLTAR_SSH_COMMAND` replaces the `ssh` program and its options (like
//! git's `GIT_SSH_COMMAND`), e.g. `ssh -i /etc/voltar/id_ed25519 -o UserKnownHostsFile=/etc/voltar/known_hosts`.
//!
//! What ssh says on stderr when a connection fails (no route, refused, permission denied, `docker: not found` on
//! the remote) is kept, so that a failure to reach the engine names its cause instead of "connection closed".

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::process::Command;
use tokio::task::JoinHandle;

/// Where an `ssh://` endpoint points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SshDest {
    /// `user@host` or `host`, as ssh takes it.
    pub destination: String,
    pub port: Option<u16>,
    /// The engine's socket on the remote host, when not the default.
    pub socket: Option<String>,
}

impl SshDest {
    /// Parses what follows `ssh://`; `Err` says what is wrong with it.
    pub fn parse(rest: &str) -> Result<SshDest, String> {
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        // `[::1]:22` or `host:22` or `host`.
        let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
            let (h, after) = inner
                .split_once(']')
                .ok_or("an IPv6 address needs its closing `]`")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("unexpected `{after}` after the address")),
            };
            (h, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("expected ssh://[USER@]HOST[:PORT]".into());
        }
        if host.starts_with('-') || user.is_some_and(|u| u.is_empty() || u.starts_with('-')) {
            return Err("a host or user may not be empty or start with `-`".into());
        }
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{p}` is not a port number"))
            })
            .transpose()?;
        let socket = path.filter(|p| *p != "/").map(str::to_string);
        Ok(SshDest {
            destination: match user {
                Some(u) => format!("{u}@{host}"),
                None => host.to_string(),
            },
            port,
            socket,
        })
    }

    /// The command that opens one connection: `ssh [opts] [-p PORT] -- DEST docker [--host unix://SOCKET]
    /// system dial-stdio`, with `ssh [opts]` from `ssh_command` (split on whitespace) when given.
    pub fn command(&self, ssh_command: Option<&str>) -> Vec<String> {
        let mut argv: Vec<String> = ssh_command
            .map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter(|words| !words.is_empty())
            .unwrap_or_else(|| vec!["ssh".into()]);
        argv.extend(
            ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-T"]
                .into_iter()
                .map(str::to_string),
        );
        if let Some(p) = self.port {
            argv.extend(["-p".to_string(), p.to_string()]);
        }
        argv.extend(["--".to_string(), self.destination.clone(), "docker".into()]);
        if let Some(s) = &self.socket {
            argv.push(format!("--host=unix://{s}"));
        }
        argv.extend(["system".to_string(), "dial-stdio".to_string()]);
        argv
    }
}

/// A Unix socket whose connections are carried to the remote engine by `ssh`. Stops (and removes its directory)
/// when dropped; the ssh processes of open connections are killed with it.
#[derive(Debug)]
pub(super) struct SshBridge {
    /// Private (0700), removed on drop.
    dir: PathBuf,
    accept: JoinHandle<()>,
    /// The last thing an ssh process said on stderr before it ended with a failure.
    said: Arc<Mutex<String>>,
}

impl SshBridge {
    pub fn start(dest: &SshDest, ssh_command: Option<&str>) -> std::io::Result<SshBridge> {
        let dir = std::env::temp_dir().join(format!(
            "voltar-ssh-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let listener = match UnixListener::bind(dir.join("docker.sock")) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let argv = dest.command(ssh_command);
        let said = Arc::new(Mutex::new(String::new()));
        let told = said.clone();
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(carry(conn, argv.clone(), told.clone()));
            }
        });
        Ok(SshBridge { dir, accept, said })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// What ssh last said on a failed connection (empty when nothing failed).
    pub fn said(&self) -> String {
        self.said.lock().expect("ssh stderr").clone()
    }
}

impl Drop for SshBridge {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One connection: an ssh process whose stdin and stdout are the connection's two directions.
async fn carry(mut conn: tokio::net::UnixStream, argv: Vec<String>, said: Arc<Mutex<String>>) {
    let spawned = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            *said.lock().expect("ssh stderr") = format!("cannot run `{}`: {e}", argv[0]);
            return;
        }
    };
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return;
    };
    let errors = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = (&mut stderr).take(16 * 1024).read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    let (mut from_conn, mut to_conn) = conn.split();
    let up = async {
        let _ = tokio::io::copy(&mut from_conn, &mut stdin).await;
        drop(stdin);
    };
    let down = tokio::io::copy(&mut stdout, &mut to_conn);
    // The engine's answers end the connection: when ssh's stdout closes, the connection is done.
    tokio::select! {
        _ = down => {}
        _ = async { up.await; std::future::pending::<()>().await } => {}
    }
    let status = match tokio::time::timeout(std::time::Duration::from_secs(2), child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    if let Ok(text) = errors.await {
        if status.is_some_and(|s| !s.success()) {
            let text = meaningful(&text);
            if !text.is_empty() {
                *said.lock().expect("ssh stderr") = text;
            }
        }
    }
}

/// The lines of ssh's stderr that say something (not its warnings about adding a host to known hosts).
fn meaningful(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_like_the_docker_cli() {
        let d = |s| SshDest::parse(s);
        assert_eq!(
            d("me@host:2222").unwrap(),
            SshDest {
                destination: "me@host".into(),
                port: Some(2222),
                socket: None
            }
        );
        assert_eq!(d("host").unwrap().destination, "host");
        assert_eq!(d("host").unwrap().port, None);
        assert_eq!(d("[::1]:22").unwrap().destination, "::1");
        assert_eq!(d("[::1]:22").unwrap().port, Some(22));
        assert_eq!(
            d("me@host/run/user/1000/docker.sock").unwrap().socket,
            Some("/run/user/1000/docker.sock".into())
        );
        assert_eq!(d("host/").unwrap().socket, None);
        assert!(d("").is_err());
        assert!(d("me@").is_err());
        assert!(d("host:ssh").unwrap_err().contains("`ssh` is not a port"));
        assert!(d("-oProxyCommand=x").is_err());
        assert!(d("-u@host").is_err());
    }

    #[test]
    fn the_command_is_ssh_then_dial_stdio() {
        let d = SshDest::parse("me@host:2222/var/run/other.sock").unwrap();
        assert_eq!(
            d.command(None).join(" "),
            "ssh -o BatchMode=yes -o ConnectTimeout=10 -T -p 2222 -- me@host docker \
             --host=unix:///var/run/other.sock system dial-stdio"
        );
        assert_eq!(
            d.command(Some("ssh -i /k"))[..3].join(" "),
            "ssh -i /k",
            "VOLTAR_SSH_COMMAND replaces the program and its options"
        );
        assert_eq!(d.command(Some("  "))[0], "ssh");
    }

    #[test]
    fn only_meaningful_stderr_is_kept() {
        assert_eq!(
            meaningful("Warning: Permanently added '[127.0.0.1]:2222' (ED25519) to the list of known hosts.\r\nroot@127.0.0.1: Permission denied (publickey).\n"),
            "root@127.0.0.1: Permission denied (publickey)."
        );
    }
}
