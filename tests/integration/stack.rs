//! Issue 15, last bullet of "Swarm": voltar as a global service (`deploy/stack.yaml`) backs up each node's local
//! volumes under a per-node prefix (`prefix = "nodes/{node}"`), and `VOLTAR_NODE` reads one node's backups from
//! anywhere.
//!
//! The stack runs in a second dockerd of its own ([`SecondEngine`], made a single-node swarm), never on the
//! shared engine. The file is deployed as shipped, changed only where this machine needs it (each change is
//! checked to have applied, so the test fails when the file changes under it): the second engine's socket and
//! volumes directory instead of the default ones, and a host directory of the test as the target (`/backups`)
//! instead of S3; the config (a Swarm `configs:` entry) has a schedule every 2 s. The stack's own overlay
//! network works with `--bridge=none`, so the network is left as shipped.
//!
//! It needs voltar's image (`voltar:<major>.<minor>`, `scripts/image.sh`) built from this tree: without it the
//! test skips loudly, and fails under CI, like `image.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_docker;
use crate::support::{docker_raw, in_ci, unique, Out, SecondEngine};

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

/// The shipped stack file.
fn stack_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/stack.yaml")
}

/// `voltar:<major>.<minor>` when it was built, else `None` (after saying so; a failure under CI).
fn image() -> Option<String> {
    let version = env!("CARGO_PKG_VERSION");
    let minor = version.rsplit_once('.').map(|(m, _)| m).unwrap_or(version);
    let tag = format!("voltar:{minor}");
    if docker_raw(&["image", "inspect", &tag]).status.success() {
        return Some(tag);
    }
    let msg = format!("image {tag} not built (run scripts/image.sh)");
    assert!(!in_ci(), "{msg}");
    eprintln!("\n!!! SKIPPING: {msg}\n");
    None
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "deploy/stack.yaml no longer has `{from}` once: adapt this test"
    );
    text.replacen(from, to, 1)
}

/// The files `docker stack deploy` reads beside the stack file: the config and the two secrets.
fn beside(dir: &Path, config: &str) {
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(dir.join("config.toml"), config).unwrap();
    std::fs::write(dir.join("secrets/s3-key-id"), "test-key").unwrap();
    std::fs::write(dir.join("secrets/s3-secret"), "test-secret").unwrap();
}

/// `docker stack config` (the docker CLI's own reading of a stack file, as `docker stack deploy` does) accepts the
/// shipped file, and what it reads is a global service with the hardening the file promises.
#[test]
fn issue15_stack_file_is_accepted_by_docker_stack_config() {
    let probe = Command::new("docker")
        .args(["stack", "config", "--help"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        let msg = "the docker CLI has no `docker stack config`";
        assert!(!in_ci(), "{msg}");
        eprintln!("\n!!! SKIPPING: {msg}\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(stack_file(), dir.path().join("stack.yaml")).unwrap();
    beside(dir.path(), "");
    let out = Out::from(
        Command::new("docker")
            .args(["stack", "config", "-c", "stack.yaml"])
            .current_dir(dir.path())
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{out:?}");
    for want in [
        "mode: global",
        "read_only: true",
        "- ALL",
        "- DAC_READ_SEARCH",
        "target: /etc/voltar/config.toml",
        // Secrets readable by root only (0400): voltar refuses a secret file others may read.
        "mode: 256",
        "source: /var/lib/docker/volumes\n        target: /var/lib/docker/volumes\n        read_only: true",
        "source: voltar-state\n        target: /var/lib/voltar",
        "- healthcheck",
    ] {
        assert!(out.stdout.contains(want), "no `{want}` in:\n{}", out.stdout);
    }
}

/// Deploy the stack on a one-node swarm: within a deadline a backup of the node's labelled volume appears under
/// `nodes/<the node's name>/` (never under a literal `{node}`), and `voltar list` run here with
/// `VOLTAR_NODE=<name>` (and no engine to ask) sees it, while another node's prefix is empty.
#[test]
fn issue15_global_service_backs_up_each_node_under_its_own_prefix() {
    require_docker!();
    let Some(img) = image() else { return };
    let Some(mut engine) = SecondEngine::start() else {
        return;
    };
    engine.swarm_init();
    // voltar's image in the second engine, without a registry.
    let mut save = Command::new("docker")
        .args(["save", &img])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let load = Command::new("docker")
        .args(["-H", engine.host(), "load", "-q"])
        .stdin(save.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(save.wait().unwrap().success() && load.status.success());

    // The node's name as the swarm shows it, and the engine's: {node} is the latter; they are one name.
    let node = engine.docker(&["info", "--format", "{{.Name}}"]);
    assert_eq!(
        engine.docker(&["node", "ls", "--format", "{{.Hostname}}"]),
        node
    );
    let vol = unique("stack-vol");
    engine.docker(&["volume", "create", "--label", "app=stack-test", &vol]);
    let data =
        PathBuf::from(engine.docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", &vol]));
    std::fs::write(data.join("hello.txt"), "from the node").unwrap();
    let volumes_dir =
        PathBuf::from(engine.docker(&["info", "--format", "{{.DockerRootDir}}"])).join("volumes");
    let socket = engine.host().strip_prefix("unix://").unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let shipped = std::fs::read_to_string(stack_file()).unwrap();
    let mut stack = replace_once(&shipped, "image: voltar:0.1", &format!("image: {img}"));
    stack = replace_once(
        &stack,
        "- /var/run/docker.sock:/var/run/docker.sock",
        &format!("- {socket}:/var/run/docker.sock"),
    );
    stack = replace_once(
        &stack,
        "- /var/lib/docker/volumes:/var/lib/docker/volumes:ro",
        &format!(
            "- {v}:{v}:ro\n      - {b}:/backups",
            v = volumes_dir.display(),
            b = backups.display()
        ),
    );
    std::fs::write(dir.path().join("stack.yaml"), stack).unwrap();
    beside(
        dir.path(),
        "[target.offsite]\ntype = \"local\"\npath = \"/backups\"\nprefix = \"nodes/{node}\"\n\
         [job.often]\ntargets = [\"offsite\"]\nschedule = \"*/2 * * * * *\"\n",
    );
    let stack_name = unique("vs").replace('-', "");
    let deploy = Out::from(
        Command::new("docker")
            .args(["-H", engine.host(), "stack", "deploy", "-c", "stack.yaml"])
            .arg(&stack_name)
            .current_dir(dir.path())
            .output()
            .unwrap(),
    );
    assert_eq!(deploy.code, 0, "docker stack deploy: {deploy:?}");

    // A committed backup (its manifest) of the volume under the node's own prefix.
    let prefix = backups.join("nodes").join(&node);
    let t = Instant::now();
    let manifest = loop {
        let found = std::fs::read_dir(&prefix)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("manifest.json"))
            .filter_map(|m| std::fs::read_to_string(m).ok())
            .find(|m| m.contains(&format!("\"name\": \"{vol}\"")));
        if let Some(m) = found {
            break m;
        }
        let literal = backups.join("nodes/{node}");
        assert!(
            !literal.exists(),
            "the service wrote its backups under a literal {} (placeholder not expanded)",
            literal.display()
        );
        if t.elapsed() > Duration::from_secs(120) {
            let service = format!("{stack_name}_voltar");
            let ids = engine.docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.swarm.service.name={service}"),
            ]);
            let logs: Vec<String> = ids
                .split_whitespace()
                .map(|id| {
                    let o = engine.docker_raw(&["logs", id]);
                    format!(
                        "{id}:\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .collect();
            panic!(
                "no backup of {vol} under {} after 120 s\nservice: {}\nbackups dir: {:?}\nlogs:\n{}",
                prefix.display(),
                engine.docker(&["service", "ps", "--no-trunc", &service]),
                walkdir::WalkDir::new(&backups)
                    .into_iter()
                    .flatten()
                    .map(|e| e.path().display().to_string())
                    .collect::<Vec<_>>(),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(manifest.contains("\"app\": \"stack-test\""), "{manifest}");
    // Made in a container whose own host name is its id: the manifest names the node.
    assert!(
        manifest.contains(&format!("\"host\": \"{node}\"")),
        "{manifest}"
    );

    // Here, with the same target spelled for this host: VOLTAR_NODE picks the node, no engine is asked.
    let host_config = dir.path().join("host.toml");
    std::fs::write(
        &host_config,
        format!(
            "[target.offsite]\ntype = \"local\"\npath = \"{}\"\nprefix = \"nodes/{{node}}\"\n",
            backups.display()
        ),
    )
    .unwrap();
    let list = |node: &str| {
        Out::from(
            Command::new(BIN)
                .args(["-c", host_config.to_str().unwrap(), "list", "--json"])
                .env("VOLTAR_NODE", node)
                .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
                .env("VOLTAR_STATE_DIR", dir.path().join("state"))
                .env_remove("VOLTAR_CONFIG")
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        )
    };
    let mine = list(&node);
    assert_eq!(mine.code, 0, "{mine:?}");
    assert!(
        mine.stdout.contains(&format!("\"name\": \"{vol}\"")),
        "{mine:?}"
    );
    assert!(
        mine.stdout.contains(&prefix.display().to_string()),
        "the expanded prefix is shown: {mine:?}"
    );
    let other = list("some-other-node");
    assert_eq!(other.code, 0, "{other:?}");
    assert!(!other.stdout.contains(&vol), "{other:?}");

    let rm = engine.docker_raw(&["stack", "rm", &stack_name]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
}

/// `voltar` with `config` (a file in `dir`), no engine reachable, `VOLTAR_NODE` as given.
fn voltar_without_engine(dir: &Path, config: &str, node: Option<&str>, args: &[&str]) -> Out {
    let path = dir.join("voltar.toml");
    std::fs::write(&path, config).unwrap();
    let mut c = Command::new(BIN);
    c.arg("-c")
        .arg(&path)
        .args(args)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("VOLTAR_STATE_DIR", dir.join("state"))
        .env_remove("VOLTAR_CONFIG")
        .env_remove("VOLTAR_NODE")
        .stdin(Stdio::null());
    if let Some(n) = node {
        c.env("VOLTAR_NODE", n);
    }
    Out::from(c.output().unwrap())
}

/// The user-visible side of placeholders, no engine needed: `list` shows the expanded target; a placeholder
/// misspelt is a config error (exit 2) naming the key; `{node}` with no engine and no `VOLTAR_NODE` says to set
/// it; a `VOLTAR_NODE` that is not one path component is refused.
#[test]
fn issue15_placeholders_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let config = |prefix: &str| {
        format!(
            "[target.disk]\ntype = \"local\"\npath = \"{}\"\nprefix = \"{prefix}\"\n",
            bk.display()
        )
    };
    let out = voltar_without_engine(dir.path(), &config("nodes/{node}"), Some("n1"), &["list"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("{}/nodes/n1", bk.display())),
        "{out:?}"
    );

    let out = voltar_without_engine(dir.path(), &config("nodes/{nod}"), Some("n1"), &["list"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("target.disk.prefix: unknown placeholder `{nod}`"),
        "{out:?}"
    );

    let out = voltar_without_engine(dir.path(), &config("nodes/{node}"), None, &["list"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("target.disk uses {node}"), "{out:?}");
    assert!(out.stderr.contains("set VOLTAR_NODE"), "{out:?}");

    let out = voltar_without_engine(dir.path(), &config("nodes/{node}"), Some("../x"), &["list"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not one path component"), "{out:?}");
    assert!(!dir.path().join("x").exists());
}

/// Retention is judged per expanded prefix: two nodes sharing one config (`prefix = "nodes/{node}"`) each
/// back up the same volume twice under `keep-last = 1`; node a's prune removes one of its own backups and none
/// of node b's (run on the shared engine, `VOLTAR_NODE` standing in for two nodes).
#[test]
fn issue15_each_node_prunes_only_its_own_prefix() {
    require_docker!();
    let mut c = crate::support::Cleanup::default();
    let vol = c.volume("stack-prune");
    std::fs::write(crate::support::mountpoint(&vol).join("f"), "data").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let config = dir.path().join("voltar.toml");
    std::fs::write(
        &config,
        format!(
            "[selection]\ninclude = [\"{vol}\"]\n[retention]\nkeep-last = 1\n\
             [target.disk]\ntype = \"local\"\npath = \"{}\"\nprefix = \"nodes/{{node}}\"\n",
            bk.display()
        ),
    )
    .unwrap();
    let run = |node: &str, args: &[&str]| {
        Out::from(
            Command::new(BIN)
                .arg("-c")
                .arg(&config)
                .args(args)
                .env("VOLTAR_NODE", node)
                .env("VOLTAR_STATE_DIR", dir.path().join("state"))
                .env_remove("VOLTAR_CONFIG")
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        )
    };
    let backups = |node: &str| {
        std::fs::read_dir(bk.join("nodes").join(node))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("manifest.json").exists())
            .count()
    };
    for node in ["node-a", "node-a", "node-b", "node-b"] {
        let out = run(node, &["backup", "--no-prune", "--only", &vol]);
        assert_eq!(out.code, 0, "{node}: {out:?}");
    }
    assert_eq!((backups("node-a"), backups("node-b")), (2, 2));
    let out = run("node-a", &["prune"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!((backups("node-a"), backups("node-b")), (1, 2));
    let dry = run("node-b", &["prune", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout
            .contains(&format!("{}/nodes/node-b", bk.display())),
        "{dry:?}"
    );
    assert_eq!(backups("node-b"), 2);
}
