//! Shared test helpers: finding the real Docker Engine and S3 server, unique names, cleanup.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The locally built test image (scripts/env.sh builds it).
pub const IMAGE: &str = "voltar-test:latest";

/// True when running under CI: a missing service is then a failure.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Whether the Docker Engine answers and the test image exists. Under CI, panics when not; on a developer's
/// machine, prints a loud message and returns false (the caller returns early).
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let msg = "Docker Engine or the voltar-test image is not available: run scripts/env.sh";
        if in_ci() {
            panic!("{msg}");
        }
        eprintln!("\n!!! SKIPPING: {msg}\n");
    }
    ok
}

/// Skip (or fail under CI) when Docker is missing.
#[macro_export]
macro_rules! require_docker {
    () => {
        if !$crate::support::docker_available() {
            return;
        }
    };
}

/// The S3 endpoint of the test server (scripts/env.sh starts it), or None (panics under CI).
pub fn s3_endpoint() -> Option<String> {
    let ep = std::env::var("VOLTAR_TEST_S3_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:9333".to_string());
    let hostport = ep
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let ok = std::net::TcpStream::connect_timeout(
        &hostport
            .parse()
            .expect("VOLTAR_TEST_S3_ENDPOINT is http://ip:port"),
        std::time::Duration::from_secs(2),
    )
    .is_ok();
    if !ok {
        let msg = format!("S3 test server not reachable at {ep}: run scripts/env.sh");
        if in_ci() {
            panic!("{msg}");
        }
        eprintln!("\n!!! SKIPPING: {msg}\n");
        return None;
    }
    Some(ep)
}

/// Send SIGINT to `child` and wait for it: its output (stderr as text) and how long it took to end after the signal.
pub fn interrupt(child: Child) -> (Output, String, Duration) {
    let sent = Instant::now();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stopped = sent.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr, stopped)
}

/// `files` files `blob00`, `blob01`, … of `bytes` random (incompressible) bytes each in `dir`: data that takes a
/// while to pack, send or extract.
pub fn fill_random(dir: &Path, files: usize, bytes: u64) {
    for i in 0..files {
        let mut f = std::fs::File::create(dir.join(format!("blob{i:02}"))).unwrap();
        let mut random = std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), bytes);
        std::io::copy(&mut random, &mut f).unwrap();
    }
}

/// A name unique to this test process and call, e.g. `vt-1234-00007-pg`.
///
/// The counter is zero-padded so that names sort in the order they were made: voltar reads sources in name order,
/// and tests that make `a` before `b` expect `a` to be read first (with a bare counter, `…-100-b` sorts before
/// `…-99-a`).
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vt-{}-{:05}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Run `docker <args>`; panic with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    if !out.status.success() {
        panic!(
            "docker {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Run `docker <args>` and return the raw output, success or not.
pub fn docker_raw(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

/// Container state as `docker inspect` says: running, paused, exited, created…
pub fn state(container: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Status}}", container])
}

/// Host path of a volume's data.
pub fn mountpoint(volume: &str) -> PathBuf {
    PathBuf::from(docker(&[
        "volume",
        "inspect",
        "-f",
        "{{.Mountpoint}}",
        volume,
    ]))
}

/// Removes containers and volumes when dropped (also when the test panics).
#[derive(Default)]
pub struct Cleanup {
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
}

impl Cleanup {
    pub fn volume(&mut self, tag: &str) -> String {
        let name = unique(tag);
        docker(&["volume", "create", &name]);
        self.volumes.push(name.clone());
        name
    }

    /// Start a long-running container of the test image with `mounts` (`-v` specs), returning its name.
    pub fn run(&mut self, tag: &str, extra: &[&str]) -> String {
        let name = unique(tag);
        let mut args = vec!["run", "-d", "--name", name.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sleep", "100000"]);
        docker(&args);
        self.containers.push(name.clone());
        name
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker_raw(&["rm", "-f", c]);
        }
        for v in &self.volumes {
            let _ = docker_raw(&["volume", "rm", "-f", v]);
        }
    }
}

// -------------------------------------------------------------------------------------------------------------
// A private S3 server, killed or frozen mid-upload (the shared one is left alone).

pub const MOTO: &str = "/opt/voltar-moto/bin/moto_server";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private S3 server (moto) on its own port, for tests that kill or freeze it; stopped when dropped.
pub struct PrivateS3 {
    pub child: Child,
    pub port: u16,
}

impl PrivateS3 {
    pub fn start(port: u16) -> Option<PrivateS3> {
        Self::start_with_env(port, &[])
    }

    /// Started with extra environment (e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0`: a server that checks access keys).
    pub fn start_with_env(port: u16, env: &[(&str, &str)]) -> Option<PrivateS3> {
        if !Path::new(MOTO).exists() {
            let msg = format!("{MOTO} is missing: run scripts/env.sh s3");
            if in_ci() {
                panic!("{msg}");
            }
            eprintln!("\n!!! SKIPPING: {msg}\n");
            return None;
        }
        let child = Command::new(MOTO)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let s = PrivateS3 { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "moto did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(s)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn signal(&self, sig: i32) {
        // Only the process this test started, by its id.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// -------------------------------------------------------------------------------------------------------------
// A relay in front of a real S3 server that stops passing an answer on half-way, as a server that freezes
// mid-download does (deterministically: after so many bytes, not after so much time).

/// A TCP relay on loopback to `127.0.0.1:<upstream>`. Each connection's answer is passed on up to `limit` bytes,
/// then held (the connection stays open, nothing more arrives) until the limit is raised.
pub struct StallingRelay {
    pub port: u16,
    limit: Arc<std::sync::atomic::AtomicU64>,
}

impl StallingRelay {
    pub fn start(upstream: u16, limit: u64) -> StallingRelay {
        use std::sync::atomic::AtomicU64;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let limit = Arc::new(AtomicU64::new(limit));
        let l = limit.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                // The request as it comes; the answer up to the limit.
                std::thread::spawn(move || relay(client, server, &AtomicU64::new(u64::MAX)));
                let l = l.clone();
                std::thread::spawn(move || relay(s2, c2, &l));
            }
        });
        StallingRelay { port, limit }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Pass everything on from now on (held answers resume).
    pub fn unlimit(&self) {
        self.limit.store(u64::MAX, Ordering::SeqCst);
    }
}

/// Copy `from` to `to`, holding once `limit` bytes have passed (until the limit is raised); ends when either
/// side closes.
fn relay(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    limit: &std::sync::atomic::AtomicU64,
) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 << 10];
    let mut passed = 0u64;
    loop {
        let room = limit.load(Ordering::SeqCst).saturating_sub(passed);
        if room == 0 {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let want = buf.len().min(room.min(usize::MAX as u64) as usize);
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        passed += n as u64;
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

// -------------------------------------------------------------------------------------------------------------
// Container lifecycle events, streamed from the engine.

/// One container lifecycle event.
#[derive(Clone, Debug)]
pub struct Ev {
    pub nanos: i128,
    pub container: String,
    pub action: String,
}

/// Now as `docker events --since` takes it, to the nanosecond.
pub fn now_ts() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Stream `docker events` of `containers` from now on into the returned list (collected by a background thread).
/// Kill the child when done. Callers flush the stream with a marker event before trusting the list.
pub fn stream_events(containers: &[&str]) -> (Child, Arc<Mutex<Vec<Ev>>>) {
    let mut args = vec![
        "events".to_string(),
        "--since".into(),
        now_ts(),
        "--filter".into(),
        "type=container".into(),
        "--format".into(),
        "{{.TimeNano}} {{.Actor.Attributes.name}} {{.Action}}".into(),
    ];
    for c in containers {
        args.push("--filter".into());
        args.push(format!("container={c}"));
    }
    let mut child = Command::new("docker")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker events");
    let out = child.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut it = line.split_whitespace();
            let (Some(n), Some(c), Some(a)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            s2.lock().unwrap().push(Ev {
                nanos: n.parse().unwrap_or(0),
                container: c.to_string(),
                // "exec_start: sh" and the like: keep the verb.
                action: a.trim_end_matches(':').to_string(),
            });
        }
    });
    (child, seen)
}

/// What a finished `voltar` run said.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    /// stdout and stderr together, for "is it mentioned anywhere" checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reports (`--json`) and manifests

/// The entry of `report["sources"]` (a run report or a manifest) named `name`.
#[track_caller]
pub fn source<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    named(report, "sources", name)
}

/// The entry of `source["containers"]` named `name`.
#[track_caller]
pub fn container_record<'a>(source: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    named(source, "containers", name)
}

#[track_caller]
fn named<'a>(v: &'a serde_json::Value, list: &str, name: &str) -> &'a serde_json::Value {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {v:#}"))
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the {list} of {v:#}"))
}

/// The report of the target whose location starts with `location`.
#[track_caller]
pub fn target<'a>(report: &'a serde_json::Value, location: &str) -> &'a serde_json::Value {
    report["targets"]
        .as_array()
        .unwrap_or_else(|| panic!("no targets in {report:#}"))
        .iter()
        .find(|t| t["location"].as_str().unwrap_or("").starts_with(location))
        .unwrap_or_else(|| panic!("no target {location} in {report:#}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Trees on disk

/// Set the mtime (and atime) of `p`, a symlink itself rather than its target.
#[track_caller]
pub fn set_mtime(p: &Path, secs: i64, ns: u32) {
    let t = filetime::FileTime::from_unix_time(secs, ns);
    filetime::set_symlink_file_times(p, t, t)
        .unwrap_or_else(|e| panic!("mtime {}: {e}", p.display()));
}

#[track_caller]
pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

#[track_caller]
pub fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o640) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn volume_exists(name: &str) -> bool {
    docker_raw(&["volume", "inspect", name]).status.success()
}

// -------------------------------------------------------------------------------------------------------------
// Small filesystems the tests mount (they run as root).

/// A tmpfs of `size` mounted on `dir` (created) for the value's life; unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        assert!(
            matches!(st, Ok(s) if s.success()),
            "cannot mount a tmpfs on {} (the tests run as root)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }

    /// A read-only view of directory `of` at `dir` (a bind mount): reading works, writing fails with EROFS.
    pub fn read_only_view(of: &Path, dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        for args in [
            vec!["--bind".as_ref(), of.as_os_str(), dir.as_os_str()],
            vec!["-o".as_ref(), "remount,bind,ro".as_ref(), dir.as_os_str()],
        ] {
            let st = std::process::Command::new("mount").args(&args).status();
            assert!(
                matches!(st, Ok(s) if s.success()),
                "cannot bind-mount {} read-only (the tests run as root)",
                of.display()
            );
        }
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

// -------------------------------------------------------------------------------------------------------------
// A second Docker Engine of the tests' own (Swarm mode, later remote engines): the shared engine is never
// switched into swarm mode, since other tests run on it at the same time.

/// A private `dockerd` with its data root, exec root (its own containerd) and socket in a temporary directory,
/// `voltar-test:latest` loaded into it. Reach it with `DOCKER_HOST=` [`SecondEngine::host`]. On drop it leaves
/// its swarm (if it joined one), removes its containers, is stopped (SIGTERM by the pid of the process this test
/// started, SIGKILL after 20 s) and its directory is removed.
pub struct SecondEngine {
    dir: Option<tempfile::TempDir>,
    child: Child,
    host: String,
    swarm: bool,
}

impl SecondEngine {
    /// Start it and wait until it answers (at most 60 s). `None` when `dockerd` is not installed (a panic under
    /// CI); a daemon that does not come up is a test failure, with its log.
    pub fn start() -> Option<SecondEngine> {
        if !dockerd_installed() {
            return None;
        }
        // Short paths: the socket's path must fit a sockaddr_un (108 bytes), containerd's too.
        let dir = tempfile::Builder::new()
            .prefix("vt2e-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let sock = d.join("docker.sock");
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let ns = format!("voltar-test-{}", std::process::id());
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("x"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args(["--containerd-namespace", &ns])
            .args(["--containerd-plugins-namespace", &format!("{ns}-plugins")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut engine = SecondEngine {
            host: format!("unix://{}", sock.display()),
            dir: Some(dir),
            child,
            swarm: false,
        };
        engine.ready_and_loaded("the second dockerd", 60);
        Some(engine)
    }

    /// `unix://…/docker.sock`, for `DOCKER_HOST` and `docker -H`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Run `docker -H <this engine> <args>`; panic with its stderr on failure.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = self.docker_raw(args);
        if !out.status.success() {
            panic!(
                "docker -H {} {:?} failed: {}",
                self.host,
                args,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn docker_raw(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .output()
            .expect("docker CLI")
    }

    /// `docker swarm init` on this engine only: a single-node swarm on loopback, on ports of its own.
    pub fn swarm_init(&mut self) {
        let listen = format!("127.0.0.1:{}", free_port());
        // VXLAN port in the range the engine accepts, away from the default 4789.
        let data_port = (40000 + std::process::id() % 9000).to_string();
        self.docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            &listen,
            "--data-path-port",
            &data_port,
        ]);
        self.swarm = true;
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.path().join("dockerd.log")).ok())
            .unwrap_or_default()
    }

    /// Like [`SecondEngine::start`], but a stand-in for a remote or rootless engine: its data root is a tmpfs
    /// mounted in dockerd's OWN mount namespace (`unshare -m --propagation private`), so this process cannot see
    /// its volumes (their `Mountpoint`s are empty directories here), and it listens on `tcp://127.0.0.1:<free
    /// port>` ([`SecondEngine::host`]) besides its socket. `unshare` and `sh` exec dockerd, so the child's pid is
    /// dockerd's and `Drop` stops it as usual; the tmpfs goes with its mount namespace.
    pub fn start_hidden() -> Option<SecondEngine> {
        if !dockerd_installed() {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("vt2h-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let root = d.join("root");
        std::fs::create_dir(&root).unwrap();
        let sock = d.join("docker.sock");
        let port = free_port();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let ns = format!("voltar-test-h{}", std::process::id());
        let script = format!(
            "mount -t tmpfs -o size=1g tmpfs '{root}' && exec dockerd --data-root '{root}' --exec-root '{x}' \
             --pidfile '{pid}' -H 'unix://{sock}' -H tcp://127.0.0.1:{port} --bridge=none --iptables=false \
             --ip6tables=false --containerd-namespace {ns} --containerd-plugins-namespace {ns}-plugins",
            root = root.display(),
            x = d.join("x").display(),
            pid = d.join("dockerd.pid").display(),
            sock = sock.display(),
        );
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd in its own mount namespace");
        let mut engine = SecondEngine {
            host: format!("tcp://127.0.0.1:{port}"),
            dir: Some(dir),
            child,
            swarm: false,
        };
        engine.ready_and_loaded("the hidden dockerd", 90);
        Some(engine)
    }

    /// Wait until this engine answers (at most `secs`), then `docker save IMAGE | docker -H … load`: the image
    /// without a registry. A daemon that exits or does not come up is a test failure, with its log.
    fn ready_and_loaded(&mut self, what: &str, secs: u64) {
        let t = Instant::now();
        loop {
            if self.docker_raw(&["version"]).status.success() {
                break;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{what} exited ({st}):\n{}", self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{what} did not answer in {secs} s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut save = Command::new("docker")
            .args(["save", IMAGE])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let load = Command::new("docker")
            .args(["-H", &self.host, "load", "-q"])
            .stdin(save.stdout.take().unwrap())
            .output()
            .expect("docker load");
        assert!(save.wait().unwrap().success(), "docker save {IMAGE} failed");
        assert!(
            load.status.success(),
            "loading {IMAGE} into {what}: {}",
            String::from_utf8_lossy(&load.stderr)
        );
    }

    /// The pid of the dockerd this value started (for checking that `Drop` stopped it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// `dockerd` can be run here; else `false` after saying so (a panic under CI).
fn dockerd_installed() -> bool {
    if Command::new("dockerd").arg("--version").output().is_ok() {
        return true;
    }
    let msg = "dockerd is not installed: cannot start a second engine (apt-get install docker.io)";
    assert!(!in_ci(), "{msg}");
    eprintln!("\n!!! SKIPPING: {msg}\n");
    false
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if self.swarm {
            let _ = self.docker_raw(&["swarm", "leave", "--force"]);
        }
        let ids = self.docker_raw(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker_raw(&["rm", "-f", id]);
        }
        // Only the dockerd this value started, by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) {
            if t.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(dir) = self.dir.take() {
            // Whatever the daemon left mounted under its roots (overlay layers, shm) goes first.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "grep -o ' {0}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
                    dir.path().display()
                ))
                .status();
            let _ = dir.close();
        }
    }
}

// -------------------------------------------------------------------------------------------------------------
// The mirror image: a restore in place through the engine runs `voltar engine-mirror` in a container of it.

/// `voltar-mirror-test:<hash of the test binary's size and mtime>`: FROM scratch, this test build of voltar
/// (debug info stripped) at `/usr/local/bin/voltar` and the shared libraries `ldd` names, at their paths. Built
/// once per test process (and only when the engine does not have that tag yet), with `DOCKER_BUILDKIT=0`: the
/// release image (`scripts/image.sh`) takes far too long to build for a test. Older tags are removed.
pub fn mirror_image() -> String {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_voltar_image("voltar-mirror-test", MIRROR_DOCKERFILE, &[]))
        .clone()
}

/// As the release image (deploy/Dockerfile): a VOLUME for the state dir, an ENTRYPOINT and command, a HEALTHCHECK.
const MIRROR_DOCKERFILE: &str = "FROM scratch\nCOPY rootfs/ /\nVOLUME [\"/var/lib/voltar\"]\n\
    ENTRYPOINT [\"/usr/local/bin/voltar\"]\nCMD [\"daemon\"]\n\
    HEALTHCHECK --interval=1s CMD [\"/usr/local/bin/voltar\", \"healthcheck\"]\n";

/// A mirror image whose `engine-mirror` FAILS, half-way, whenever the tree it copies holds a file named
/// [`FAIL_MIRROR`] (it copies, then removes the destination's `half` and exits 1); otherwise it is this voltar.
/// On busybox (the test image), this voltar at `/usr/local/bin/voltar-real`.
pub fn failing_mirror_image() -> String {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            build_voltar_image(
                "voltar-mirror-fail-test",
                &format!(
                    "FROM {IMAGE}\nCOPY rootfs/ /\nRUN mv /usr/local/bin/voltar /usr/local/bin/voltar-real\n\
                     COPY voltar.sh /usr/local/bin/voltar\n"
                ),
                &[("voltar.sh", FAILING_MIRROR)],
            )
        })
        .clone()
}

/// The marker file [`failing_mirror_image`] fails on.
pub const FAIL_MIRROR: &str = "FAIL-MIRROR";

const FAILING_MIRROR: &str = r#"#!/bin/sh
if [ "$1" = engine-mirror ] && [ "$2" != --probe ] && [ -e /voltar/src/FAIL-MIRROR ]; then
  /usr/local/bin/voltar-real "$@" >/dev/null 2>&1
  rm -rf /voltar/dst/half
  echo "voltar engine-mirror: error: a failure made by the test" >&2
  exit 1
fi
exec /usr/local/bin/voltar-real "$@"
"#;

/// Build `<repo>:<hash>` from `dockerfile` with `rootfs/` = this test build of voltar (debug info stripped) at
/// `/usr/local/bin/voltar` and the libraries `ldd` names, plus `files` (name, text; executable) beside it.
fn build_voltar_image(repo: &str, dockerfile: &str, files: &[(&str, &str)]) -> String {
    use std::hash::{Hash, Hasher};
    let bin = assert_cmd::cargo::cargo_bin("voltar");
    let meta = std::fs::metadata(&bin).expect("the voltar test binary");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (meta.len(), meta.modified().unwrap(), dockerfile, files).hash(&mut h);
    let tag = format!("{repo}:{:016x}", h.finish());
    if docker_raw(&["image", "inspect", &tag]).status.success() {
        return tag;
    }
    let ctx = tempfile::tempdir().unwrap();
    let root = ctx.path().join("rootfs");
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    let st = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&bin)
        .arg(root.join("usr/local/bin/voltar"))
        .status()
        .expect("objcopy");
    assert!(st.success(), "objcopy --strip-debug {}", bin.display());
    let ldd = Command::new("ldd").arg(&bin).output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let dest = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(p, &dest).unwrap_or_else(|e| panic!("copying {p}: {e}"));
        }
    }
    for (name, text) in files {
        let p = ctx.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(
            &p,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .unwrap();
    }
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(ctx.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    assert!(
        out.status.success(),
        "building {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Earlier builds' tags (a tag still used by a container stays).
    for old in docker(&["images", repo, "--format", "{{.Repository}}:{{.Tag}}"]).lines() {
        if old != tag {
            let _ = docker_raw(&["rmi", old]);
        }
    }
    tag
}

/// `docker save IMAGE | docker -H host load`.
pub fn load_image(image: &str, host: &str) {
    let mut save = Command::new("docker")
        .args(["save", image])
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker save");
    let load = Command::new("docker")
        .args(["-H", host, "load", "-q"])
        .stdin(save.stdout.take().unwrap())
        .output()
        .expect("docker load");
    assert!(save.wait().unwrap().success(), "docker save {image} failed");
    assert!(
        load.status.success(),
        "loading {image} into {host}: {}",
        String::from_utf8_lossy(&load.stderr)
    );
}
