//! Running a command inside a running container (the Engine's exec API): hooks, and streamed dumps both ways.
//!
//! Design:
//! * **One primitive for both uses.** [`ExecSpec`] is argv (a shell is the caller's choice: `["sh", "-c", …]`),
//!   user, environment and a timeout; stdout is either captured (capped) or sent chunk by chunk into a channel
//!   (a dump streamed into the archive pipeline; the channel's bound is the back-pressure). stderr is always
//!   captured, capped. The exit code comes from inspecting the exec after its output ended. stdin is closed at
//!   once, or ([`Engine::exec_with_stdin`]) fed chunk by chunk from a channel and closed (EOF) when the channel
//!   ends — a dump streamed into a restore command; a command that exits without reading it all ends the feed.
//! * **Capped capture.** Each captured stream keeps its first [`CAPTURE_CAP`] bytes and counts the rest, so a
//!   chatty command costs bounded memory and the log says how much was cut.
//! * **Timeouts kill.** The Engine API has no "kill exec". At the timeout (or when the run is cancelled) we
//!   inspect the exec for its process id, which the engine reports in the host's pid namespace, and SIGKILL that
//!   process and everything below it (its children, found through `/proc/*/stat`, and its process group). We only
//!   do that when the process is visibly the container's: `/proc/PID/cgroup` must name the container's id — so
//!   a pid from a remote engine (or from another pid namespace, when voltar runs in a container without the
//!   host's pid namespace) is never mistaken for a local process. In that case nothing is killed: the command
//!   may go on running in the container, and the outcome says so ([`Killed::NotLocal`]). Running voltar on the
//!   Docker host (or with `--pid host`) is what makes timeouts enforceable.
//! * **Errors.** Creating or starting the exec is a [`DockerError`] (a container that is not running, a user that
//!   does not exist, a program that is not found — the engine reports the last two as exit code 126/127 or as a
//!   start error, depending on the runtime), and so is losing the output stream midway (the command is killed
//!   first, as at a timeout). A command that runs and fails is not an error here: its exit code is in the
//!   [`ExecOutcome`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DockerError, Engine};

/// Bytes kept of each captured stream (stdout, stderr).
pub const CAPTURE_CAP: usize = 64 * 1024;

/// How long to wait for the output to end after the process was killed, before giving up on it.
const AFTER_KILL: Duration = Duration::from_secs(10);

/// What to run in a container.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    /// Program and arguments (no shell unless the caller puts one here).
    pub argv: Vec<String>,
    /// `user`, `user:group`, `uid` or `uid:gid`; `None`: the image's user.
    pub user: Option<String>,
    /// `NAME=value` pairs added to the container's environment. Never logged.
    pub env: Vec<String>,
    /// Killed after this long.
    pub timeout: Duration,
}

/// Where stdout goes.
#[derive(Debug)]
pub enum ExecStdout {
    /// Kept in the outcome, capped at [`CAPTURE_CAP`].
    Capture,
    /// Each chunk sent into the channel as it arrives (bounded: a slow receiver slows the command down).
    Stream(mpsc::Sender<Bytes>),
}

/// A captured stream: its first [`CAPTURE_CAP`] bytes and how many more there were.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub dropped: u64,
}

impl Captured {
    fn push(&mut self, chunk: &[u8]) {
        let room = CAPTURE_CAP.saturating_sub(self.bytes.len());
        let take = room.min(chunk.len());
        self.bytes.extend_from_slice(&chunk[..take]);
        self.dropped += (chunk.len() - take) as u64;
    }

    /// The text (lossy UTF-8), trimmed, with a `… N bytes truncated` mark when it was cut.
    pub fn text(&self) -> String {
        let mut t = String::from_utf8_lossy(&self.bytes).trim_end().to_string();
        if self.dropped > 0 {
            t.push_str(&format!("\n… {} bytes truncated", self.dropped));
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.dropped == 0
    }
}

/// How an exec ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEnd {
    /// The command exited by itself (see [`ExecOutcome::exit_code`]).
    Exited,
    /// It ran past its timeout and was killed (or could not be).
    TimedOut(Killed),
    /// The run was cancelled (SIGINT/SIGTERM) while it ran, and it was killed (or could not be).
    Cancelled(Killed),
}

/// What killing an exec's processes did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Killed {
    /// This many processes got SIGKILL.
    Killed(usize),
    /// It had ended by the time we looked.
    AlreadyGone,
    /// Its process is not visible here as the container's (remote engine, another pid namespace): not killed,
    /// it may still be running in the container.
    NotLocal(String),
}

impl std::fmt::Display for Killed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Killed::Killed(n) => write!(f, "killed ({n} process(es))"),
            Killed::AlreadyGone => f.write_str("it had already ended"),
            Killed::NotLocal(why) => write!(
                f,
                "NOT killed: {why}; it may still be running in the container (run voltar on the Docker host \
                 so that timeouts can be enforced)"
            ),
        }
    }
}

/// The result of one exec.
#[derive(Clone, Debug)]
pub struct ExecOutcome {
    /// `None` when the engine did not report one (killed and never reaped in time, or a remote engine).
    pub exit_code: Option<i64>,
    /// Empty when stdout was streamed.
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
    pub end: ExecEnd,
}

impl ExecOutcome {
    /// Exited by itself with code 0.
    pub fn success(&self) -> bool {
        self.end == ExecEnd::Exited && self.exit_code == Some(0)
    }
}

impl Engine {
    /// Run `spec` in the running container `container` (id or name) and wait for it, at most `spec.timeout`
    /// (then it is killed, see the module docs). `cancel` cuts it short the same way.
    pub async fn exec(
        &self,
        container: &str,
        spec: &ExecSpec,
        stdout: ExecStdout,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, DockerError> {
        self.exec_io(container, spec, stdout, None, cancel, &|_| Ok(()))
            .await
    }

    /// [`exec`](Self::exec), telling `before_start` the exec's id after it is created and before it starts (a
    /// crash journal records it there, so a run killed while the command runs leaves its id for `recover`). When
    /// `before_start` refuses, the command is not started and its reason is the error.
    pub async fn exec_noted(
        &self,
        container: &str,
        spec: &ExecSpec,
        stdout: ExecStdout,
        cancel: &CancellationToken,
        before_start: &(dyn Fn(&str) -> Result<(), String> + Send + Sync),
    ) -> Result<ExecOutcome, DockerError> {
        self.exec_io(container, spec, stdout, None, cancel, before_start)
            .await
    }

    /// [`Engine::exec`] with the chunks of `stdin` written to the command's standard input, which is closed when
    /// the channel ends (the sender dropped). When the command stops reading (it exited), the rest of the
    /// channel is dropped: the sender's next send fails.
    pub async fn exec_with_stdin(
        &self,
        container: &str,
        spec: &ExecSpec,
        stdout: ExecStdout,
        stdin: mpsc::Receiver<Bytes>,
        cancel: &CancellationToken,
    ) -> Result<ExecOutcome, DockerError> {
        self.exec_io(container, spec, stdout, Some(stdin), cancel, &|_| Ok(()))
            .await
    }

    async fn exec_io(
        &self,
        container: &str,
        spec: &ExecSpec,
        stdout: ExecStdout,
        stdin: Option<mpsc::Receiver<Bytes>>,
        cancel: &CancellationToken,
        before_start: &(dyn Fn(&str) -> Result<(), String> + Send + Sync),
    ) -> Result<ExecOutcome, DockerError> {
        let started = Instant::now();
        let action = || format!("running a command in container {container}");
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions::<String> {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    attach_stdin: Some(stdin.is_some()),
                    tty: Some(false),
                    cmd: Some(spec.argv.clone()),
                    user: spec.user.clone(),
                    env: (!spec.env.is_empty()).then(|| spec.env.clone()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                self.map_err(&action(), e, || {
                    DockerError::NoSuchContainer(container.to_string())
                })
            })?;
        let exec_id = created.id;
        before_start(&exec_id).map_err(|message| DockerError::Api {
            action: action(),
            message,
        })?;
        let started_exec = self
            .docker
            .start_exec(
                &exec_id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| {
                self.map_err(&action(), e, || {
                    DockerError::NoSuchContainer(container.to_string())
                })
            })?;
        let StartExecResults::Attached { mut output, input } = started_exec else {
            return Err(DockerError::Api {
                action: action(),
                message: "the engine did not attach to the command's output".into(),
            });
        };
        // Without stdin, closing our end lets a command that reads stdin see EOF instead of waiting forever.
        let feeder = stdin.map(|rx| tokio::spawn(feed_stdin(rx, input)));

        let mut out = Captured::default();
        let mut err = Captured::default();
        let mut sink = match stdout {
            ExecStdout::Capture => None,
            ExecStdout::Stream(tx) => Some(tx),
        };
        let deadline = tokio::time::Instant::now() + spec.timeout;
        let mut end = ExecEnd::Exited;
        let mut stream_error = None;
        loop {
            let next = tokio::select! {
                n = output.next() => n,
                _ = tokio::time::sleep_until(deadline) => {
                    end = ExecEnd::TimedOut(self.kill_exec(&exec_id).await);
                    break;
                }
                _ = cancel.cancelled() => {
                    end = ExecEnd::Cancelled(self.kill_exec(&exec_id).await);
                    break;
                }
            };
            match next {
                None => break,
                Some(Ok(LogOutput::StdOut { message })) => match &sink {
                    None => out.push(&message),
                    Some(tx) => {
                        if tx.send(message).await.is_err() {
                            // The receiver gave up (its pipeline failed): keep draining so the command can end.
                            sink = None;
                        }
                    }
                },
                Some(Ok(LogOutput::StdErr { message })) => err.push(&message),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    stream_error = Some(e);
                    break;
                }
            }
        }
        if stream_error.is_some() {
            // We lost the command's output: do not leave it running unseen (it would also block a stream
            // receiver's pipeline waiting for an end that never comes).
            end = ExecEnd::Cancelled(self.kill_exec(&exec_id).await);
        }
        if end != ExecEnd::Exited {
            // Let the output end (the process is gone, if we could kill it), bounded: a process we could not
            // kill keeps the stream open.
            let _ = tokio::time::timeout(AFTER_KILL, async {
                while let Some(item) = output.next().await {
                    if let Ok(LogOutput::StdErr { message }) = item {
                        err.push(&message);
                    }
                }
            })
            .await;
        }
        drop(sink);
        if let Some(f) = feeder {
            // The command has ended (its output did): a feeder still waiting for input has nobody to give it to.
            f.abort();
            let _ = f.await;
        }
        let exit_code = self.exit_code(&exec_id, end != ExecEnd::Exited).await?;
        if let Some(e) = stream_error {
            return Err(self.map_err(&action(), e, || {
                DockerError::NoSuchContainer(container.to_string())
            }));
        }
        Ok(ExecOutcome {
            exit_code,
            stdout: out,
            stderr: err,
            duration: started.elapsed(),
            end,
        })
    }

    /// The exec's exit code once it stopped running. The engine records it a moment after the output ends:
    /// poll briefly (longer after a kill, while the runtime reaps the process).
    async fn exit_code(&self, exec_id: &str, killed: bool) -> Result<Option<i64>, DockerError> {
        let wait = if killed {
            AFTER_KILL
        } else {
            Duration::from_secs(5)
        };
        let until = Instant::now() + wait;
        loop {
            let i = self.docker.inspect_exec(exec_id).await.map_err(|e| {
                self.map_err(&format!("inspecting command {exec_id}"), e, || {
                    DockerError::Api {
                        action: "inspecting a command".into(),
                        message: format!("exec {exec_id} is gone"),
                    }
                })
            })?;
            if i.running != Some(true) {
                return Ok(i.exit_code);
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL the processes of an exec a dead run left running (its id from that run's journal), when they are
    /// visibly the container's on this host; `AlreadyGone` when it ended.
    pub async fn kill_left_exec(&self, exec_id: &str) -> Killed {
        self.kill_exec(exec_id).await
    }

    /// SIGKILL the exec's process and everything below it, when it is visibly the container's on this host.
    async fn kill_exec(&self, exec_id: &str) -> Killed {
        let i = match self.docker.inspect_exec(exec_id).await {
            Ok(i) => i,
            Err(e) => return Killed::NotLocal(format!("cannot inspect the command: {e}")),
        };
        if i.running != Some(true) {
            return Killed::AlreadyGone;
        }
        let pid = i.pid.unwrap_or(0);
        let container_id = i.container_id.unwrap_or_default();
        if pid <= 0 || container_id.is_empty() {
            return Killed::NotLocal(
                "the engine did not say which process runs the command".into(),
            );
        }
        let pid = pid as i32;
        tokio::task::spawn_blocking(move || kill_tree(pid, &container_id))
            .await
            .unwrap_or_else(|e| Killed::NotLocal(format!("internal error while killing: {e}")))
    }
}

/// Write every chunk of `rx` to the command's stdin, then close it (EOF). A write that fails (the command exited
/// or closed its stdin) ends the feed: `rx` is dropped, so the sender learns it at its next send.
async fn feed_stdin(
    mut rx: mpsc::Receiver<Bytes>,
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
) {
    use tokio::io::AsyncWriteExt;
    while let Some(chunk) = rx.recv().await {
        if input.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = input.flush().await;
    // Half-close: the engine then closes the command's stdin, and the command sees the end of its input.
    let _ = input.shutdown().await;
}

/// Kill `pid` and its descendants (and its process group when it leads one), after checking that `pid` is a
/// process of container `container_id` as this host sees it.
fn kill_tree(pid: i32, container_id: &str) -> Killed {
    match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(cg) if cg.contains(container_id) => {}
        Ok(_) => {
            return Killed::NotLocal(format!(
                "process {pid} here is not in the container's cgroup (the engine is remote, or voltar runs in \
                 another pid namespace)"
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Killed::NotLocal(format!(
                "process {pid} is not visible here (the engine is remote, or voltar runs in another pid \
                 namespace)"
            ))
        }
        Err(e) => return Killed::NotLocal(format!("cannot read /proc/{pid}/cgroup: {e}")),
    }
    let mut killed = BTreeSet::new();
    // Twice: a process forked between the scan and the kill is caught by the second round.
    for _ in 0..2 {
        let mut victims = descendants(pid);
        victims.insert(0, pid);
        for p in victims {
            if send_kill(p) {
                killed.insert(p);
            }
        }
    }
    if let Some(pgid) = rustix::process::Pid::from_raw(pid) {
        if rustix::process::getpgid(Some(pgid)).ok() == Some(pgid) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
    if killed.is_empty() {
        Killed::AlreadyGone
    } else {
        Killed::Killed(killed.len())
    }
}

fn send_kill(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|p| rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok())
}

/// Every process below `root`, parents before children, from the parent pids in `/proc/*/stat`.
fn descendants(root: i32) -> Vec<i32> {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parent_of(&s))
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if !out.contains(&c) && c != root {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// The parent pid in a `/proc/PID/stat` line: the field after the state, after the command name's `)`.
fn parent_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_the_head_and_counts_the_rest() {
        let mut c = Captured::default();
        c.push(&vec![b'a'; CAPTURE_CAP - 1]);
        c.push(b"bcd");
        assert_eq!(c.bytes.len(), CAPTURE_CAP);
        assert_eq!(c.dropped, 2);
        assert!(
            c.text().ends_with("… 2 bytes truncated"),
            "{}",
            &c.text()[CAPTURE_CAP - 5..]
        );
        let mut small = Captured::default();
        small.push(b"hello\n");
        assert_eq!(small.text(), "hello");
    }

    #[test]
    fn a_process_outside_the_containers_cgroup_is_never_killed() {
        // What a pid from a remote engine (or another pid namespace) looks like here: some process of ours.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let k = kill_tree(child.id() as i32, &"f".repeat(64));
        assert!(
            matches!(&k, Killed::NotLocal(why) if why.contains("cgroup")),
            "{k:?}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process was killed"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // A pid that does not exist here.
        let k = kill_tree(i32::MAX - 1, "abc");
        assert!(
            matches!(&k, Killed::NotLocal(why) if why.contains("not visible")),
            "{k:?}"
        );
    }

    #[test]
    fn parent_pid_from_stat_with_odd_names() {
        assert_eq!(parent_of("42 (sleep) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_of("42 (a b) c) R 9 1 1"), Some(9));
        assert_eq!(parent_of("garbage"), None);
    }
}
