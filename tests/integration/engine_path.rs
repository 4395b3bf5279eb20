//! Issue 15, "Engine data path" (the read half): a volume whose host path this process cannot read is read
//! through the engine: a helper container (created, never started) with the volume mounted read-only, its
//! archive (`GET /containers/{id}/archive`) streamed during the hold and repacked into voltar's own format.
//!
//! The remote/rootless stand-in is [`SecondEngine::start_hidden`]: a dockerd on a TCP loopback port whose data
//! root is a tmpfs in its own mount namespace, so its volumes' `Mountpoint`s do not exist for this process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{docker, docker_raw, state, unique, Cleanup, Out, SecondEngine, IMAGE};

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

/// A tree with every kind of entry and metadata the engine's tar carries, made with busybox in a container
/// (the volume at `/d`).
const MAKE_TREE: &str = r#"set -e; cd /d
mkdir -p dir/sub empty
printf 'hello\n' > dir/a.txt
dd if=/dev/urandom of=dir/big.bin bs=65536 count=40 2>/dev/null
ln dir/a.txt dir/a-hardlink
ln -s a.txt dir/a-symlink
ln -s /etc/passwd abs-link
mkfifo fifo
mknod null-dev c 1 3
L=n; for i in 1 2 3 4 5 6 7; do L=$L$L; done
printf 'long\n' > "dir/sub/$L-file"
mkdir "dir/sub/$L-dir"
ln -s "$L-file" "dir/sub/$L-link"
chown 1234:5678 dir/a.txt
chown -h 4321:8765 dir/a-symlink
chmod 4750 dir/a.txt
chmod 1777 empty
chmod 2755 dir/sub
touch -d '2020-01-02 03:04:05' dir/big.bin
touch -d '2021-03-04 05:06:07' dir/sub
"#;

/// One line per entry under `/d`: name|type|mode|uid|gid|size|mtime|inode|(link target or sha256).
const LIST_TREE: &str = r#"cd /d && find . | sort | while IFS= read -r f; do
  s=$(stat -c '%F|%a|%u|%g|%s|%Y|%i' "$f")
  if [ -L "$f" ]; then t=$(readlink "$f"); elif [ -f "$f" ]; then t=$(sha256sum < "$f" | cut -d' ' -f1); else t=; fi
  echo "$f|$s|$t"
done"#;

/// The listing with what must not be compared taken out: inode numbers become the hard-link group (the first
/// name of the inode when it has several names), directory sizes (filesystem-specific) are dropped.
fn normalize(listing: &str) -> Vec<String> {
    let rows: Vec<Vec<String>> = listing
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect();
    let mut by_ino: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r.len(), 9, "odd listing line {r:?}");
        by_ino.entry(r[7].clone()).or_default().push(r[0].clone());
    }
    rows.into_iter()
        .map(|mut r| {
            let names = &by_ino[&r[7]];
            r[7] = if names.len() > 1 {
                names.iter().min().unwrap().clone()
            } else {
                "-".into()
            };
            if r[1] == "directory" {
                r[5] = "-".into();
            }
            r.join("|")
        })
        .collect()
}

/// A state dir, a working dir, a backup dir and config files for voltar, pointed at `host` (`None`: the shared
/// engine).
struct World {
    host: Option<String>,
    tmp: tempfile::TempDir,
}

impl World {
    fn new(host: Option<&str>) -> World {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("cwd")).unwrap();
        World {
            host: host.map(str::to_string),
            tmp,
        }
    }

    fn target(&self, name: &str) -> String {
        self.tmp.path().join(name).display().to_string()
    }

    fn config(&self, name: &str, text: &str) -> String {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.tmp.path().join("cwd"))
            .env("VOLTAR_STATE_DIR", self.tmp.path().join("state"))
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .stdin(Stdio::null());
        match &self.host {
            Some(h) => c.env("DOCKER_HOST", h),
            None => c.env_remove("DOCKER_HOST"),
        };
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        Out::from(self.cmd(args).output().expect("run voltar"))
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start voltar")
    }
}

fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

fn only_source(report: &Value) -> &Value {
    let s = report["sources"].as_array().expect("sources");
    assert_eq!(s.len(), 1, "{report:#}");
    &s[0]
}

/// The one backup's manifest in the local target `dir`.
fn manifest(dir: &str) -> Value {
    let ids: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("manifest.json").exists())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    serde_json::from_slice(&std::fs::read(ids[0].join("manifest.json")).unwrap()).unwrap()
}

/// `tar -tv` of the one archive in the local target `dir`: names, types, modes, owners, sizes, mtimes (minutes),
/// link targets.
fn archive_listing(dir: &str) -> String {
    let ids: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    let arch = std::fs::read_dir(&ids[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -tv --numeric-owner",
            arch.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Helper containers (any run's) on the engine `docker` speaks to that mount `volume`.
fn helpers_of(d: &dyn Fn(&[&str]) -> String, volume: &str) -> Vec<String> {
    d(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        "label=voltar.helper",
        "--filter",
        &format!("volume={volume}"),
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// Backup from the hidden engine over TCP, with the container that uses the volume paused during the read:
/// restored locally, the tree is the one the engine has (names, types, modes, owners, sizes, mtimes, symlink
/// targets, hard links, contents); verify passes; no helper is left; restored there into a new volume and in
/// place (the app stopped and started again), both hold the source's tree; `data-path = "host"` fails naming
/// `data-path`; a volume no container uses, on an engine without voltar's image, fails naming `helper-image`.
/// Dropping the engine stops its dockerd.
#[test]
fn issue15_backup_through_a_hidden_engine_restores_the_same_tree() {
    let Some(e) = SecondEngine::start_hidden() else {
        return;
    };
    assert!(e.host().starts_with("tcp://127.0.0.1:"), "{}", e.host());
    let vol = unique("eng-vol");
    e.docker(&["volume", "create", &vol]);
    let mountpoint = e.docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &vol]);
    assert!(
        !Path::new(&mountpoint).exists(),
        "{mountpoint} is visible from here: the engine is not hidden"
    );
    e.docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/d"),
        IMAGE,
        "sh",
        "-c",
        MAKE_TREE,
    ]);
    let app = unique("eng-app");
    e.docker(&[
        "run",
        "-d",
        "--name",
        &app,
        "--label",
        "voltar.quiesce=pause",
        "-v",
        &format!("{vol}:/d"),
        IMAGE,
        "sleep",
        "3600",
    ]);
    let engine_tree = e.docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/d:ro"),
        IMAGE,
        "sh",
        "-c",
        LIST_TREE,
    ]);

    let w = World::new(Some(e.host()));
    let t = w.target("backups");
    let since = e.docker(&["system", "info", "-f", "{{.SystemTime}}"]);
    let out = w.run(&["--json", "backup", "--only", &vol, "-t", &t]);
    assert_eq!(out.code, 0, "{out:?}");
    let report = json(&out);
    let src = only_source(&report);
    assert_eq!(src["status"], "ok", "{src:#}");
    assert_eq!(src["read-via"], "engine", "{src:#}");
    let warned = src["warnings"].as_array().unwrap();
    assert!(
        warned
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("read through the engine:")),
        "{src:#}"
    );
    assert_eq!(manifest(&t)["sources"][0]["read-via"], "engine");

    // Paused during the read: the helper's archive was asked for between the pause and the unpause.
    let until = e.docker(&["system", "info", "-f", "{{.SystemTime}}"]);
    let events = e.docker(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    let at = |what: &str| {
        events
            .lines()
            .position(|l| l == what)
            .unwrap_or_else(|| panic!("no `{what}` event in:\n{events}"))
    };
    let read_at = events
        .lines()
        .position(|l| l.starts_with("archive-path voltar-helper-"))
        .unwrap_or_else(|| panic!("no archive-path event of a helper in:\n{events}"));
    assert!(at(&format!("pause {app}")) < read_at, "{events}");
    assert!(read_at < at(&format!("unpause {app}")), "{events}");
    assert!(
        !events
            .lines()
            .any(|l| l.starts_with("start voltar-helper-")),
        "a helper was started:\n{events}"
    );
    assert_eq!(
        e.docker(&["inspect", "-f", "{{.State.Status}}", &app]),
        "running"
    );
    assert!(
        helpers_of(&|a| e.docker(a), &vol).is_empty(),
        "a helper was left"
    );

    // Restored here, the tree is the engine's.
    let to = w.tmp.path().join("restored");
    let out = w.run(&[
        "restore",
        "latest",
        "--source",
        &vol,
        "--to-dir",
        to.to_str().unwrap(),
        "-t",
        &t,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let local_tree = docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/d:ro", to.display()),
        IMAGE,
        "sh",
        "-c",
        LIST_TREE,
    ]);
    let (want, got) = (normalize(&engine_tree), normalize(&local_tree));
    assert_eq!(want.len(), 14, "{engine_tree}");
    assert_eq!(got, want, "restored tree differs from the engine's");
    let out = w.run(&["verify", "latest", "-t", &t]);
    assert_eq!(out.code, 0, "{out:?}");

    // Restored into a new volume on the hidden engine (its host path is not writable here: through the engine),
    // the new volume holds the engine's tree.
    let new = unique("eng-new");
    let out = w.run(&[
        "restore",
        "latest",
        "--source",
        &vol,
        "--to-volume",
        &new,
        "-t",
        &t,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("written through the engine"), "{out:?}");
    let new_tree = e.docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{new}:/d:ro"),
        IMAGE,
        "sh",
        "-c",
        LIST_TREE,
    ]);
    // Except what the engine's extraction cannot keep, and the report says so: the set-user-ID bit of a file
    // with hard links (`dir/a.txt` and `dir/a-hardlink`, mode 4750).
    let without_setid: Vec<String> = want
        .iter()
        .map(|l| l.replace("|regular file|4750|", "|regular file|750|"))
        .collect();
    assert_ne!(
        without_setid, want,
        "the tree has no set-ID hard-linked file"
    );
    assert_eq!(
        normalize(&new_tree),
        without_setid,
        "the volume restored through the engine differs from the source"
    );
    assert!(
        out.stdout
            .contains("set-user-ID/set-group-ID bits of 1 hard-linked file(s) are not kept"),
        "{out:?}"
    );
    assert!(
        helpers_of(&|a| e.docker(a), &new).is_empty(),
        "a helper was left"
    );
    // In place on the hidden engine (the issue's "restore … in place, identical to the source"): a staging
    // volume filled through the engine, mirrored into the volume by this build's voltar in a container (its image
    // loaded there as `docker save | docker load` would) while the app is stopped; the app runs again after, and
    // the volume holds the source tree (but for the set-ID bit of the hard-linked file, as above).
    let mirror = crate::support::mirror_image();
    crate::support::load_image(&mirror, e.host());
    let mirror_cfg = w.config(
        "mirror.toml",
        &format!("[docker]\nmirror-image = \"{mirror}\"\n"),
    );
    let app_started = e.docker(&["inspect", "-f", "{{.State.StartedAt}}", &app]);
    e.docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/d"),
        IMAGE,
        "sh",
        "-c",
        "rm -rf /d/dir/sub && echo changed > /d/dir/a.txt && echo new > /d/added",
    ]);
    let out = w.run(&[
        "-c",
        &mirror_cfg,
        "restore",
        "latest",
        "--source",
        &vol,
        "-t",
        &t,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("written in place through the engine"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(&format!("containers stopped: {app}")),
        "{out:?}"
    );
    assert_eq!(
        e.docker(&["inspect", "-f", "{{.State.Status}}", &app]),
        "running"
    );
    assert_ne!(
        e.docker(&["inspect", "-f", "{{.State.StartedAt}}", &app]),
        app_started,
        "the app was not stopped for the restore"
    );
    let after = e.docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/d:ro"),
        IMAGE,
        "sh",
        "-c",
        LIST_TREE,
    ]);
    assert_eq!(
        normalize(&after),
        without_setid,
        "the volume restored in place through the engine differs from the source"
    );
    assert!(
        helpers_of(&|a| e.docker(a), &vol).is_empty(),
        "a helper was left"
    );
    let made = e.docker(&["volume", "ls", "-q", "--filter", "label=voltar.staging-of"]);
    assert!(made.is_empty(), "a staging volume was left: {made}");
    let made = e.docker(&["volume", "ls", "-q", "--filter", "label=voltar.keep-of"]);
    assert!(made.is_empty(), "a keep volume was left: {made}");

    // `host` forbids the engine: a clear error naming the setting.
    let host_only = w.config("host.toml", "[docker]\ndata-path = \"host\"\n");
    let out = w.run(&[
        "-c",
        &host_only,
        "--json",
        "backup",
        "--only",
        &vol,
        "-t",
        &w.target("b2"),
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    let err = only_source(&json(&out))["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("data-path"), "{err}");

    // No container uses this volume and the engine has no voltar image: nothing to create a helper from.
    let lone = unique("eng-lone");
    e.docker(&["volume", "create", &lone]);
    let out = w.run(&["--json", "backup", "--only", &lone, "-t", &w.target("b3")]);
    assert_ne!(out.code, 0, "{out:?}");
    let err = only_source(&json(&out))["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("helper-image") && err.contains("docker load"),
        "{err}"
    );
    assert!(helpers_of(&|a| e.docker(a), &lone).is_empty());

    // Drop stops the dockerd it started.
    let pid = e.pid();
    drop(e);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the hidden dockerd (pid {pid}) still runs after drop"
    );
}

/// On the shared engine, `data-path = "engine"` stores what the host path stores: the same counts and the same
/// archive listing (names, types, modes, owners, sizes, mtimes, link targets; the engine drops sub-second mtimes,
/// which `tar -tv` does not show).
#[test]
fn issue15_engine_data_path_stores_what_the_host_path_stores() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("eng-same");
    docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/d"),
        IMAGE,
        "sh",
        "-c",
        MAKE_TREE,
    ]);
    let w = World::new(None);
    let engine_cfg = w.config("engine.toml", "[docker]\ndata-path = \"engine\"\n");
    let host_cfg = w.config("host.toml", "[docker]\ndata-path = \"host\"\n");
    let (te, th) = (w.target("via-engine"), w.target("via-host"));
    let oe = w.run(&[
        "-c",
        &engine_cfg,
        "--json",
        "backup",
        "--only",
        &vol,
        "-t",
        &te,
    ]);
    assert_eq!(oe.code, 0, "{oe:?}");
    let oh = w.run(&[
        "-c", &host_cfg, "--json", "backup", "--only", &vol, "-t", &th,
    ]);
    assert_eq!(oh.code, 0, "{oh:?}");
    let (re, rh) = (json(&oe), json(&oh));
    let (se, sh) = (only_source(&re), only_source(&rh));
    assert_eq!(se["read-via"], "engine");
    assert_eq!(sh["read-via"], "host");
    assert_eq!(se["counts"], sh["counts"], "{se:#}\n{sh:#}");
    assert_eq!(archive_listing(&te), archive_listing(&th));
    assert!(
        helpers_of(&|a| docker(a), &vol).is_empty(),
        "a helper was left"
    );
}

/// SIGKILL of voltar while it reads through the engine leaves the helper (and the paused container);
/// `voltar recover` removes the helper and resumes the container.
#[test]
fn issue15_sigkill_while_reading_through_the_engine_is_repaired_by_recover() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("eng-kill");
    let data = crate::support::mountpoint(&vol);
    crate::s3::random_file(&data.join("random.bin"), 96 << 20);
    let app = c.run(
        "eng-kill-app",
        &[
            "-v",
            &format!("{vol}:/d"),
            "--label",
            "voltar.quiesce=pause",
        ],
    );
    let w = World::new(None);
    // zstd level 12 over random data: the read takes seconds.
    let cfg = w.config(
        "slow.toml",
        "[docker]\ndata-path = \"engine\"\n[archive]\nzstd-level = 12\n",
    );
    let t = w.target("backups");
    let mut child = w.spawn(&["-c", &cfg, "backup", "--only", &vol, "-t", &t]);
    let start = Instant::now();
    let mut seen = false;
    while start.elapsed() < Duration::from_secs(60) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        if state(&app) == "paused" && !helpers_of(&|a| docker(a), &vol).is_empty() {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen, "never saw the helper while the container was paused");
    // The read is under way (the container is paused only once the helper exists).
    std::thread::sleep(Duration::from_millis(300));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
    let left = helpers_of(&|a| docker(a), &vol);
    assert_eq!(
        left.len(),
        1,
        "the killed run's helper should be left: {left:?}"
    );
    assert_eq!(state(&app), "paused");

    let out = w.run(&["recover"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.all().contains("helper container voltar-helper-"),
        "{out:?}"
    );
    assert!(
        helpers_of(&|a| docker(a), &vol).is_empty(),
        "recover left the helper"
    );
    assert_eq!(state(&app), "running");
    // Nothing left to do.
    let again = w.run(&["recover"]);
    assert!(!again.all().contains("helper container"), "{again:?}");
}

/// `helper-image` names an image the engine does not have: a clear error naming the setting and `docker load`,
/// before any container is touched.
#[test]
fn issue15_no_usable_helper_image_fails_before_anything_is_quiesced() {
    crate::require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("eng-noimg");
    let app = c.run(
        "eng-noimg-app",
        &[
            "-v",
            &format!("{vol}:/d"),
            "--label",
            "voltar.quiesce=pause",
        ],
    );
    let w = World::new(None);
    let cfg = w.config(
        "noimg.toml",
        "[docker]\ndata-path = \"engine\"\nhelper-image = \"voltar-no-such-image:0\"\n",
    );
    let since = docker(&["system", "info", "-f", "{{.SystemTime}}"]);
    let out = w.run(&[
        "-c",
        &cfg,
        "--json",
        "backup",
        "--only",
        &vol,
        "-t",
        &w.target("b"),
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    let err = only_source(&json(&out))["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("helper-image")
            && err.contains("voltar-no-such-image:0")
            && err.contains("docker load"),
        "{err}"
    );
    let until = docker(&["system", "info", "-f", "{{.SystemTime}}"]);
    let touched = docker_raw(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &format!("container={app}"),
        "--format",
        "{{.Action}}",
    ]);
    let touched = String::from_utf8_lossy(&touched.stdout).to_string();
    assert!(
        !touched
            .lines()
            .any(|l| l == "pause" || l == "stop" || l == "kill"),
        "the container was touched:\n{touched}"
    );
    assert_eq!(state(&app), "running");
    assert!(helpers_of(&|a| docker(a), &vol).is_empty());
}
