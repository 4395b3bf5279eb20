//! Row 18: voltar needs only the Engine API endpoints `docs/engine-api.md` lists. Backup (pause, stop, a hook),
//! restore (in place with its safety backup, into a new volume), verify and recover run through an allow-listing
//! proxy on a Unix socket that forwards only the endpoints of that page's table and answers anything else 403;
//! the test fails on any refused request, and checks the proxy saw the calls each scenario must make (so a
//! proxy that is bypassed cannot pass). The engine data path (a backup read and a restore `--to-volume` written
//! through helper containers) runs through it too.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::require_docker;
use crate::support::{docker, mountpoint, Cleanup, Out};

const ENGINE_SOCKET: &str = "/var/run/docker.sock";

/// One allowed endpoint: a method and a path whose `{…}` segments match any one segment.
#[derive(Clone, Debug)]
struct Endpoint {
    method: String,
    segments: Vec<String>,
}

impl Endpoint {
    fn matches(&self, method: &str, path: &str) -> bool {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.method == method
            && segs.len() == self.segments.len()
            && self
                .segments
                .iter()
                .zip(&segs)
                .all(|(p, s)| (p.starts_with('{') && p.ends_with('}') && !s.is_empty()) || p == s)
    }

    fn name(&self) -> String {
        format!("{} /{}", self.method, self.segments.join("/"))
    }
}

/// The endpoints of the table in `docs/engine-api.md` (rows whose first cell is `` `METHOD /path` ``).
fn documented() -> Vec<Endpoint> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/engine-api.md");
    let text = std::fs::read_to_string(&doc).expect("docs/engine-api.md");
    let rows: Vec<Endpoint> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter_map(|cell| {
            let (method, path) = cell.split_once(' ')?;
            Some(Endpoint {
                method: method.to_string(),
                segments: path
                    .trim_start_matches('/')
                    .split('/')
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect();
    assert!(
        rows.len() >= 10,
        "the table of {} was not found",
        doc.display()
    );
    rows
}

/// The request path without its query and `/v1.NN` prefix.
fn normalise(target: &str) -> String {
    let path = target.split('?').next().unwrap_or("");
    let mut segs = path.trim_start_matches('/').splitn(2, '/');
    let first = segs.next().unwrap_or("");
    let is_version =
        first.starts_with('v') && first[1..].chars().all(|c| c.is_ascii_digit() || c == '.');
    match (is_version && first.len() > 1, segs.next()) {
        (true, Some(rest)) => format!("/{rest}"),
        (true, None) => "/".into(),
        _ => path.to_string(),
    }
}

/// The proxy: forwards allowed requests to the engine, refuses the rest (and records them).
struct Proxy {
    socket: PathBuf,
    /// `METHOD /pattern` of every forwarded request.
    seen: Arc<Mutex<BTreeSet<String>>>,
    /// `METHOD /path` of every refused request.
    refused: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn start() -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let allowed = Arc::new(documented());
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (seen.clone(), refused.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (allowed, s, r) = (allowed.clone(), s.clone(), r.clone());
                std::thread::spawn(move || serve(client, &allowed, &s, &r));
            }
        });
        Proxy {
            socket,
            seen,
            refused,
            _dir: dir,
        }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn seen(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().clone()
    }

    #[track_caller]
    fn assert_nothing_refused(&self, what: &str) {
        let refused = self.refused.lock().unwrap().clone();
        assert!(
            refused.is_empty(),
            "{what}: calls outside docs/engine-api.md: {refused:?}"
        );
    }

    #[track_caller]
    fn assert_seen(&self, what: &str, wanted: &[&str]) {
        let seen = self.seen();
        for w in wanted {
            assert!(seen.contains(*w), "{what}: {w} not seen (seen: {seen:?})");
        }
    }
}

/// One client connection: requests one after another (keep-alive); each allowed one is forwarded with its body,
/// the engine's answers are copied back as they come.
fn serve(
    client: UnixStream,
    allowed: &[Endpoint],
    seen: &Mutex<BTreeSet<String>>,
    refused: &Mutex<Vec<String>>,
) {
    let Ok(mut upstream) = UnixStream::connect(ENGINE_SOCKET) else {
        return;
    };
    let (Ok(mut down), Ok(mut back)) = (upstream.try_clone(), client.try_clone()) else {
        return;
    };
    let answers = back.try_clone().ok();
    // Engine → client, raw (responses come in request order; the client waits for each).
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut down, &mut back);
        let _ = back.shutdown(std::net::Shutdown::Write);
    });
    let mut answers = answers.unwrap();
    let mut reader = BufReader::new(client);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    let _ = upstream.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(_) => {}
            }
            let end = line == b"\r\n";
            head.extend_from_slice(&line);
            if end {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut first = text.lines().next().unwrap_or("").split(' ');
        let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let path = normalise(target);
        let header = |name: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let length: u64 = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let mut body = Vec::new();
        if chunked {
            read_chunked(&mut reader, &mut body);
        } else {
            let _ = (&mut reader).take(length).read_to_end(&mut body);
        }
        match allowed.iter().find(|e| e.matches(method, &path)) {
            Some(e) => {
                seen.lock().unwrap().insert(e.name());
                if upstream.write_all(&head).is_err() || upstream.write_all(&body).is_err() {
                    return;
                }
            }
            None => {
                refused.lock().unwrap().push(format!("{method} {path}"));
                let msg =
                    format!("{{\"message\":\"{method} {path} is not in docs/engine-api.md\"}}");
                let _ = write!(
                    answers,
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{msg}",
                    msg.len()
                );
            }
        }
    }
}

/// A chunked body, kept as it came (sizes and all), up to its last chunk.
fn read_chunked(reader: &mut impl BufRead, out: &mut Vec<u8>) {
    loop {
        let mut size_line = Vec::new();
        if reader.read_until(b'\n', &mut size_line).unwrap_or(0) == 0 {
            return;
        }
        out.extend_from_slice(&size_line);
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&size_line)
                .trim()
                .split(';')
                .next()
                .unwrap_or("0"),
            16,
        )
        .unwrap_or(0);
        let mut chunk = vec![0u8; size + 2];
        if reader.read_exact(&mut chunk).is_err() {
            return;
        }
        out.extend_from_slice(&chunk);
        if size == 0 {
            return;
        }
    }
}

fn voltar(proxy: &Proxy, state: &Path, args: &[&str]) -> Out {
    Command::new(env!("CARGO_BIN_EXE_voltar"))
        .args(args)
        .env("DOCKER_HOST", proxy.host())
        .env("VOLTAR_STATE_DIR", state)
        .env_remove("VOLTAR_CONFIG")
        .env_remove("VOLTAR_LOG")
        .output()
        .expect("running voltar")
        .into()
}

#[test]
fn every_engine_call_is_documented_and_allowed() {
    require_docker!();
    let proxy = Proxy::start();
    let tmp = tempfile::tempdir().unwrap();
    let (target, state) = (tmp.path().join("target"), tmp.path().join("state"));
    std::fs::create_dir_all(&target).unwrap();
    let t = target.to_str().unwrap();
    let mut c = Cleanup::default();
    let paused = c.volume("api-paused");
    let stopped = c.volume("api-stopped");
    std::fs::write(mountpoint(&paused).join("a.txt"), "a").unwrap();
    std::fs::write(mountpoint(&stopped).join("b.txt"), "b").unwrap();
    let pauser = c.run(
        "api-pauser",
        &[
            "-l",
            "voltar.quiesce=pause",
            "-l",
            "voltar.pre-backup=echo hooked > /data/hook.txt",
            "-v",
            &format!("{paused}:/data"),
        ],
    );
    let stopper = c.run(
        "api-stopper",
        &[
            "-l",
            "voltar.quiesce=stop",
            "-l",
            "voltar.stop-timeout=1s",
            "-v",
            &format!("{stopped}:/data"),
        ],
    );

    let b = voltar(
        &proxy,
        &state,
        &["backup", "--only", &paused, "--only", &stopped, "-t", t],
    );
    assert_eq!(b.code, 0, "{b:?}");
    proxy.assert_nothing_refused("backup");
    proxy.assert_seen(
        &format!("backup {b:?}"),
        &[
            "GET /_ping",
            "GET /containers/json",
            "GET /volumes",
            "POST /containers/{id}/pause",
            "POST /containers/{id}/unpause",
            "POST /containers/{id}/stop",
            "POST /containers/{id}/start",
            "POST /containers/{id}/exec",
            "POST /exec/{id}/start",
            "GET /exec/{id}/json",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(mountpoint(&paused).join("hook.txt")).unwrap(),
        "hooked\n"
    );

    // In place (the user is stopped and started again; a safety backup of what is there), then into a new volume.
    std::fs::write(mountpoint(&stopped).join("b.txt"), "changed").unwrap();
    let r = voltar(
        &proxy,
        &state,
        &["restore", "latest", "--source", &stopped, "-t", t],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(mountpoint(&stopped).join("b.txt")).unwrap(),
        "b"
    );
    let copy = crate::support::unique("api-copy");
    c.volumes.push(copy.clone());
    let r = voltar(
        &proxy,
        &state,
        &[
            "restore",
            "latest",
            "--source",
            &paused,
            "--to-volume",
            &copy,
            "-t",
            t,
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    proxy.assert_nothing_refused("restore");
    proxy.assert_seen("restore", &["GET /volumes/{name}", "POST /volumes/create"]);

    for args in [
        vec!["verify", "--all", "-t", t],
        vec!["list", "-t", t],
        vec!["plan"],
        vec!["recover"],
    ] {
        let o = voltar(&proxy, &state, &args);
        assert_eq!(o.code, 0, "{args:?}: {o:?}");
        proxy.assert_nothing_refused(&args.join(" "));
    }
    for ct in [&pauser, &stopper] {
        assert_eq!(
            docker(&["inspect", "-f", "{{.State.Status}}", ct]),
            "running"
        );
    }
}

/// The proxy itself refuses what the page does not list (so the test above can fail): an image listing through
/// it is answered 403 and recorded.
#[test]
fn the_proxy_refuses_what_the_page_does_not_list() {
    require_docker!();
    let proxy = Proxy::start();
    let mut s = UnixStream::connect(&proxy.socket).unwrap();
    write!(
        s,
        "GET /v1.41/images/json HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    answer.push_str(&line);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(
        proxy.refused.lock().unwrap().as_slice(),
        ["GET /images/json"]
    );
    assert!(normalise("/v1.41/containers/abc/json?all=1") == "/containers/abc/json");
}

/// The engine data path, too, calls only what the page lists: a backup read through a helper container
/// (`[docker] data-path = "engine"`, the helper image named, so its inspect row is used) with a paused user, a
/// restore into a new volume written through the engine, and a restore in place through the engine (mirror
/// containers started, waited for, their output read).
#[test]
fn the_engine_data_path_calls_only_documented_endpoints() {
    require_docker!();
    let proxy = Proxy::start();
    let tmp = tempfile::tempdir().unwrap();
    let (target, state) = (tmp.path().join("target"), tmp.path().join("state"));
    std::fs::create_dir_all(&target).unwrap();
    let t = target.to_str().unwrap();
    let config = tmp.path().join("voltar.toml");
    std::fs::write(
        &config,
        format!(
            "[docker]\ndata-path = \"engine\"\nhelper-image = \"{}\"\nmirror-image = \"{}\"\n",
            crate::support::IMAGE,
            crate::support::mirror_image()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let mut c = Cleanup::default();
    let vol = c.volume("api-engine");
    std::fs::write(mountpoint(&vol).join("e.txt"), "engine").unwrap();
    let user = c.run(
        "api-engine-user",
        &["-l", "voltar.quiesce=pause", "-v", &format!("{vol}:/data")],
    );

    let b = voltar(
        &proxy,
        &state,
        &["-c", cfg, "backup", "--only", &vol, "-t", t],
    );
    assert_eq!(b.code, 0, "{b:?}");
    assert!(b.stdout.contains("read through the engine"), "{b:?}");
    proxy.assert_nothing_refused("backup through the engine");
    proxy.assert_seen(
        &format!("backup through the engine {b:?}"),
        &[
            "GET /images/{name}/json",
            "POST /containers/create",
            "GET /containers/{id}/archive",
            "DELETE /containers/{id}",
            "POST /containers/{id}/pause",
            "POST /containers/{id}/unpause",
        ],
    );

    let copy = crate::support::unique("api-engine-copy");
    c.volumes.push(copy.clone());
    let r = voltar(
        &proxy,
        &state,
        &[
            "-c",
            cfg,
            "restore",
            "latest",
            "--source",
            &vol,
            "--to-volume",
            &copy,
            "-t",
            t,
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("written through the engine"), "{r:?}");
    proxy.assert_nothing_refused("restore through the engine");
    proxy.assert_seen(
        "restore through the engine",
        &["POST /volumes/create", "PUT /containers/{id}/archive"],
    );
    assert_eq!(
        std::fs::read_to_string(mountpoint(&copy).join("e.txt")).unwrap(),
        "engine"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &user]),
        "running"
    );

    // In place through the engine (the user is stopped and started again).
    std::fs::write(mountpoint(&vol).join("e.txt"), "changed").unwrap();
    let r = voltar(
        &proxy,
        &state,
        &["-c", cfg, "restore", "latest", "--source", &vol, "-t", t],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("written in place through the engine"),
        "{r:?}"
    );
    proxy.assert_nothing_refused("restore in place through the engine");
    proxy.assert_seen(
        "restore in place through the engine",
        &[
            "POST /containers/{id}/start",
            "POST /containers/{id}/wait",
            "GET /containers/{id}/logs",
            "DELETE /volumes/{name}",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(mountpoint(&vol).join("e.txt")).unwrap(),
        "engine"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &user]),
        "running"
    );
}
