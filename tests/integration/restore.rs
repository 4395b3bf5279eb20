//! Issue 3, end to end: `voltar restore`, `list`, `show` and `verify` through the real binary against the real
//! Docker Engine (acceptance rows 3, 4, 11, 12, 13, 14).
//!
//! Every test backs up real volumes with `voltar backup`, restores with `voltar restore`, and compares trees with
//! the metadata-aware walker `crate::tree::{snapshot, diff}` (type, mode incl. suid/sgid/sticky,
//! owner, ns mtime — of the volume root too —, content, link targets, hardlink groups, xattrs, sparseness).
//! Each test has its own target directory and `VOLTAR_STATE_DIR`, unique volume/container names, and a
//! `Cleanup` guard. Containers that use volumes exit promptly on SIGTERM so a restore's stop is quick.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::tree::{diff, snapshot, snapshot_with, DiffOptions, Snapshot, SnapshotOptions};

use crate::require_docker;
use crate::support::{
    self, chmod, docker, mkfifo, mountpoint, set_mtime, volume_exists, Cleanup, Tmpfs, IMAGE,
};

// ---------------------------------------------------------------------------------------------------------------
// Harness

/// One test's world: a target directory, a state dir, and the containers/volumes to remove at the end.
struct World {
    dir: tempfile::TempDir,
    cleanup: Cleanup,
}

/// Output of one `voltar` run, with both streams as text for assertions.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("target")).unwrap();
        fs::create_dir(dir.path().join("state")).unwrap();
        World {
            dir,
            cleanup: Cleanup::default(),
        }
    }

    fn target(&self) -> String {
        self.dir.path().join("target").display().to_string()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run `voltar <args>` (no config file, own state dir, cwd = the test's temp dir).
    fn voltar(&self, args: &[&str]) -> Run {
        let out: Output = Command::cargo_bin("voltar")
            .expect("voltar binary")
            .args(args)
            .current_dir(self.dir.path())
            .env("VOLTAR_STATE_DIR", self.dir.path().join("state"))
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .output()
            .expect("running voltar");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Start `voltar <args> -t <target>` in the background (as [`World::voltar`]), stderr piped, for a test that
    /// signals it.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("voltar"))
            .args(args)
            .args(["-t", &self.target()])
            .current_dir(self.dir.path())
            .env("VOLTAR_STATE_DIR", self.path("state"))
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `voltar <args> -t <target>`, asserting exit 0.
    fn ok(&self, args: &[&str]) -> Run {
        let t = self.target();
        let mut a = args.to_vec();
        a.extend_from_slice(&["-t", &t]);
        let r = self.voltar(&a);
        assert_eq!(r.code, 0, "voltar {args:?} failed: {r:?}");
        r
    }

    /// `voltar <args> -t <target>`, any exit code.
    fn run(&self, args: &[&str]) -> Run {
        let t = self.target();
        let mut a = args.to_vec();
        a.extend_from_slice(&["-t", &t]);
        self.voltar(&a)
    }

    /// Back up one volume; returns the backup id.
    fn backup(&self, volume: &str) -> String {
        let r = self.ok(&["--json", "backup", "--only", volume]);
        let v: Value = serde_json::from_str(&r.stdout).expect("backup --json is JSON");
        v["id"].as_str().expect("backup id").to_string()
    }

    /// Backups in the target (`list --json`).
    fn list(&self) -> Value {
        serde_json::from_str(&self.run(&["--json", "list"]).stdout).expect("list --json is JSON")
    }

    /// A new volume registered for cleanup, with extra `docker volume create` args.
    fn volume_with(&mut self, tag: &str, extra: &[&str]) -> String {
        let name = support::unique(tag);
        let mut args = vec!["volume", "create"];
        args.extend_from_slice(extra);
        args.push(&name);
        docker(&args);
        self.cleanup.volumes.push(name.clone());
        name
    }

    /// A name for a volume that voltar will create, registered for cleanup.
    fn new_volume_name(&mut self, tag: &str) -> String {
        let name = support::unique(tag);
        self.cleanup.volumes.push(name.clone());
        name
    }

    /// A container that mounts `volume` at /data and exits promptly on SIGTERM.
    fn run_user(&mut self, tag: &str, volume: &str) -> String {
        let name = support::unique(tag);
        let mount = format!("{volume}:/data");
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "-v",
            &mount,
            IMAGE,
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done",
        ]);
        self.cleanup.containers.push(name.clone());
        name
    }
}

fn snap(p: &Path) -> Snapshot {
    snapshot(p).unwrap_or_else(|e| panic!("snapshot {}: {e}", p.display()))
}

/// Assert two trees are equal in everything the walker sees, the root directory included.
fn assert_same(a: &Snapshot, b: &Snapshot, what: &str) {
    let d = diff(a, b, &DiffOptions::default());
    assert!(d.is_empty(), "{what}: trees differ:\n{}", d.join("\n"));
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
}

/// A small tree with a distinctive root (mode, owner, ns mtime), a stable set of files to overwrite later.
fn fill_simple(root: &Path) {
    fs::create_dir_all(root.join("app/conf")).unwrap();
    fs::create_dir_all(root.join("db")).unwrap();
    fs::write(root.join("hello.txt"), b"restored content v1\n").unwrap();
    fs::write(root.join("app/conf/app.yml"), b"port: 8080\n").unwrap();
    fs::write(root.join("db/data.bin"), vec![7u8; 50_000]).unwrap();
    symlink("app/conf/app.yml", root.join("config-link")).unwrap();
    chown(&root.join("db/data.bin"), 999, 999);
    chown(&root.join("db"), 999, 999);
    chmod(&root.join("db"), 0o700);
    for (p, s) in [
        ("app/conf/app.yml", 1_600_000_000),
        ("app/conf", 1_600_000_100),
        ("app", 1_600_000_200),
        ("hello.txt", 1_600_000_300),
        ("db/data.bin", 1_600_000_400),
        ("db", 1_600_000_500),
        ("config-link", 1_600_000_600),
    ] {
        set_mtime(&root.join(p), s, 123_456_789);
    }
    chown(root, 1234, 2345);
    chmod(root, 0o2750);
    set_mtime(root, 1_650_000_000, 987_654_321);
}

/// Change a filled tree: overwrite, add stale files, remove one, touch the root.
fn scribble(root: &Path) {
    fs::write(root.join("hello.txt"), b"CHANGED after the backup\n").unwrap();
    fs::write(root.join("app/conf/app.yml"), b"port: 9999\n").unwrap();
    fs::write(root.join("stale.txt"), b"written after the backup\n").unwrap();
    fs::create_dir_all(root.join("db/stale-dir/deeper")).unwrap();
    fs::write(root.join("db/stale-dir/deeper/x"), b"x").unwrap();
    fs::remove_file(root.join("config-link")).unwrap();
    chmod(root, 0o755);
}

fn volume_inspect(name: &str) -> Value {
    let s = docker(&["volume", "inspect", name]);
    let v: Value = serde_json::from_str(&s).expect("volume inspect JSON");
    v[0].clone()
}

fn started_at(container: &str) -> String {
    docker(&["inspect", "-f", "{{.State.StartedAt}}", container])
}

// ---------------------------------------------------------------------------------------------------------------
// Generated trees (round-trip property)

/// Build a tree with every kind of entry voltar promises to keep, driven by `seed`.
fn generate_tree(root: &Path, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
    let mut files: Vec<PathBuf> = Vec::new();
    let mut all: Vec<PathBuf> = Vec::new();
    let modes_file = [0o644, 0o600, 0o4755, 0o2755, 0o6711, 0o444, 0o000, 0o755];
    let modes_dir = [0o755, 0o700, 0o1777, 0o2775, 0o500, 0o3770];
    let n = rng.gen_range(20..45);
    for i in 0..n {
        let parent = dirs[rng.gen_range(0..dirs.len())].clone();
        let name: Vec<u8> = match rng.gen_range(0..6) {
            // >100-byte names need PAX `path` records.
            0 => format!("long-{i}-{}", "n".repeat(rng.gen_range(100..200))).into_bytes(),
            // Not UTF-8.
            1 => {
                let mut v = format!("raw-{i}-").into_bytes();
                v.extend_from_slice(&[0xff, 0xfe, b'x', 0xc3]);
                v
            }
            2 => format!("spaces and ünïcode {i}").into_bytes(),
            _ => format!("e{i}").into_bytes(),
        };
        let rel = parent.join(OsStr::from_bytes(&name));
        let abs = root.join(&rel);
        match rng.gen_range(0..10) {
            0 | 1 => {
                fs::create_dir(&abs).unwrap();
                dirs.push(rel.clone());
            }
            2..=4 => {
                let len = rng.gen_range(0..40_000);
                let mut data = vec![0u8; len];
                rng.fill(&mut data[..]);
                fs::write(&abs, &data).unwrap();
                files.push(rel.clone());
            }
            5 => {
                // Sparse: 16 MiB apparent, a few data blocks.
                let mut f = fs::File::create(&abs).unwrap();
                f.set_len(16 << 20).unwrap();
                for off in [0u64, 5 << 20, (16 << 20) - 100] {
                    f.seek(SeekFrom::Start(off)).unwrap();
                    f.write_all(format!("data at {off} seed {seed}").as_bytes())
                        .unwrap();
                }
                files.push(rel.clone());
            }
            6 => {
                let target: Vec<u8> = match rng.gen_range(0..4) {
                    0 if !files.is_empty() => {
                        let f = &files[rng.gen_range(0..files.len())];
                        // Relative to the root, as seen from `parent`.
                        let ups = parent.components().count();
                        let mut t = "../".repeat(ups).into_bytes();
                        t.extend_from_slice(f.as_os_str().as_bytes());
                        t
                    }
                    1 => b"/etc/passwd".to_vec(),
                    2 => b"../../../../outside/the/volume".to_vec(),
                    _ => b"dangling-target".to_vec(),
                };
                symlink(OsStr::from_bytes(&target), &abs).unwrap();
            }
            7 if !files.is_empty() => {
                let f = files[rng.gen_range(0..files.len())].clone();
                fs::hard_link(root.join(&f), &abs).unwrap();
            }
            8 => mkfifo(&abs),
            _ => {
                fs::write(&abs, format!("small {i}")).unwrap();
                files.push(rel.clone());
            }
        }
        all.push(rel);
    }
    // Metadata, deepest first so setting a child's does not change its parent's mtime afterwards.
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for rel in &all {
        let abs = root.join(rel);
        let md = fs::symlink_metadata(&abs).unwrap();
        let ft = md.file_type();
        chown(&abs, rng.gen_range(0..70_000), rng.gen_range(0..70_000));
        if !ft.is_symlink() {
            // user.* xattrs exist only on regular files and directories.
            if (ft.is_file() || ft.is_dir()) && rng.gen_bool(0.4) {
                let v: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
                xattr::set(&abs, format!("user.t{}", rng.gen_range(0..3)), &v).unwrap();
            }
            let mode = if ft.is_dir() {
                modes_dir[rng.gen_range(0..modes_dir.len())]
            } else {
                modes_file[rng.gen_range(0..modes_file.len())]
            };
            chmod(&abs, mode);
        }
    }
    // Mtimes last (chmod/xattr/chown touch ctime only, but creating entries touched directory mtimes).
    for rel in &all {
        set_mtime(
            &root.join(rel),
            rng.gen_range(0..2_000_000_000),
            rng.gen_range(0..1_000_000_000),
        );
    }
    chown(root, rng.gen_range(0..70_000), rng.gen_range(0..70_000));
    xattr::set(root, "user.root", b"root xattr").unwrap();
    chmod(root, modes_dir[rng.gen_range(0..modes_dir.len())]);
    set_mtime(
        root,
        rng.gen_range(0..2_000_000_000),
        rng.gen_range(0..1_000_000_000),
    );
}

/// Back up a generated tree from a real volume (with compose-like labels) and restore it into a new volume:
/// every entry and the root compare equal, and the new volume carries the original's labels.
fn round_trip_case(seed: u64) {
    let mut w = World::new();
    let vol = w.volume_with(
        "rt",
        &[
            "--label",
            "com.docker.compose.project=shop",
            "--label",
            "com.docker.compose.volume=data",
            "--label",
            "voltar.test=round-trip",
        ],
    );
    let src = mountpoint(&vol);
    generate_tree(&src, seed);
    let before = snap(&src);
    let id = w.backup(&vol);
    let copy = w.new_volume_name("rt-copy");
    let r = w.ok(&["restore", &id, "--source", &vol, "--to-volume", &copy]);
    assert!(r.stdout.contains(&copy), "{r:?}");
    assert_same(&before, &snap(&mountpoint(&copy)), &format!("seed {seed}"));
    assert_eq!(
        volume_inspect(&copy)["Labels"],
        volume_inspect(&vol)["Labels"],
        "--to-volume copies the labels"
    );
    // The source was only read.
    assert_same(&before, &snap(&src), "source after backup");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3, max_shrink_iters: 0, failure_persistence: None, .. ProptestConfig::default() })]
    #[test]
    fn round_trip_generated_trees_into_new_volume(seed in any::<u64>()) {
        if !support::docker_available() {
            return Ok(());
        }
        round_trip_case(seed);
    }
}

/// A >8 GiB sparse file (larger than the ustar size field) survives backup and restore as a sparse file with
/// its data where it was. Contents are compared at the data offsets (hashing 8 GiB of zeros twice is slow).
#[test]
fn sparse_file_over_8_gib_round_trips() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("sparse", &[]);
    let src = mountpoint(&vol);
    let size: u64 = (8 << 30) + 12_345;
    let offsets = [0u64, 4 << 30, (8 << 30) + 1, size - 17];
    {
        let mut f = fs::File::create(src.join("huge.img")).unwrap();
        f.set_len(size).unwrap();
        for off in offsets {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(b"0123456789abcdef").unwrap();
        }
    }
    fs::write(src.join("small"), b"beside the big one").unwrap();
    let no_content = SnapshotOptions { content: false };
    let before = snapshot_with(&src, &no_content).unwrap();
    assert!(before[Path::new("huge.img")].is_sparse());
    let id = w.backup(&vol);
    let copy = w.new_volume_name("sparse-copy");
    w.ok(&["restore", &id, "--to-volume", &copy]);
    let dst = mountpoint(&copy);
    // Sizes, modes, owners, mtimes, and "still sparse".
    assert_same(
        &before,
        &snapshot_with(&dst, &no_content).unwrap(),
        "sparse",
    );
    let mut f = fs::File::open(dst.join("huge.img")).unwrap();
    for off in offsets {
        let mut buf = [0u8; 17];
        f.seek(SeekFrom::Start(off)).unwrap();
        let n = f.read(&mut buf).unwrap();
        assert!(n >= 16, "short read at {off}");
        assert_eq!(&buf[..16], b"0123456789abcdef", "data at {off}");
    }
    assert_eq!(fs::read(dst.join("small")).unwrap(), b"beside the big one");
}

// ---------------------------------------------------------------------------------------------------------------
// Live restore into the original volume

/// The full in-place restore: a running user is stopped and restarted and reads the restored data, a
/// user-stopped container stays stopped, the volume (root included) ends up exactly as backed up with no stale
/// files, and the safety backup holds what was there before and is listed with tag pre-restore.
#[test]
fn live_restore_in_place_restarts_users_and_keeps_a_safety_copy() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("live", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let running = w.run_user("live-run", &vol);
    let stopped = w.run_user("live-stopped", &vol);
    docker(&["stop", &stopped]);
    let backed_up = snap(&mp);
    let id = w.backup(&vol);
    scribble(&mp);
    let scribbled = snap(&mp);
    let started_before = started_at(&running);

    let r = w.ok(&["restore", "latest", "--source", &vol]);
    assert_same(&backed_up, &snap(&mp), "volume after in-place restore");
    assert!(!mp.join("stale.txt").exists());

    assert_eq!(support::state(&running), "running", "{r:?}");
    assert_ne!(
        started_at(&running),
        started_before,
        "the running user was stopped for the swap and started again"
    );
    assert_eq!(
        docker(&["exec", &running, "cat", "/data/hello.txt"]),
        "restored content v1"
    );
    assert_eq!(
        support::state(&stopped),
        "exited",
        "user-stopped stays stopped"
    );
    assert!(
        r.stdout.contains(&format!("restore from backup {id}")) && r.stdout.contains(&running),
        "report names the backup and the restarted container: {r:?}"
    );
    assert!(
        !r.stdout.contains(&stopped),
        "a stopped container is neither stopped nor restarted: {r:?}"
    );
    // Downtime per container, as backup reports it (issue 10: a restore said nothing about it).
    assert!(
        r.stdout.contains(&format!("restarted: {running} (down ")),
        "{r:?}"
    );

    // The safety backup: listed with its tag, and it holds the pre-restore contents.
    let list = w.list();
    let safety: Vec<&Value> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| {
            b["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "pre-restore"))
        })
        .collect();
    assert_eq!(safety.len(), 1, "{list:#}");
    let safety_id = safety[0]["id"].as_str().unwrap().to_string();
    assert!(r.stdout.contains(&safety_id), "{r:?}");
    let text = w.ok(&["list"]).stdout;
    let line = text
        .lines()
        .find(|l| l.starts_with(&safety_id))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("pre-restore"), "{text}");
    // `latest` never picks the safety backup.
    let show = w.ok(&["show", "latest"]).stdout;
    assert!(show.contains(&id), "{show}");

    let copy = w.new_volume_name("safety");
    w.ok(&["restore", &safety_id, "--to-volume", &copy]);
    assert_same(&scribbled, &snap(&mountpoint(&copy)), "safety backup");
}

/// `--no-safety-backup` takes none; restoring a volume that was deleted recreates it with its labels.
#[test]
fn restore_recreates_a_deleted_volume() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("gone", &["--label", "com.docker.compose.project=p1"]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let backed_up = snap(&mp);
    w.backup(&vol);
    docker(&["volume", "rm", &vol]);
    assert!(!volume_exists(&vol));

    let r = w.ok(&["restore", "latest", "--source", &vol, "--no-safety-backup"]);
    assert!(r.stdout.contains("(new)"), "{r:?}");
    assert!(volume_exists(&vol));
    assert_eq!(
        volume_inspect(&vol)["Labels"]["com.docker.compose.project"],
        "p1"
    );
    assert_same(&backed_up, &snap(&mountpoint(&vol)), "recreated volume");
    let n = w.list()["backups"].as_array().unwrap().len();
    assert_eq!(n, 1, "no safety backup of a volume that did not exist");
}

/// `--to-volume` creates the volume with the original driver options too (`docker volume inspect`).
#[test]
fn to_volume_copies_driver_options() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with(
        "opts",
        &[
            "--driver",
            "local",
            "--opt",
            "type=tmpfs",
            "--opt",
            "device=tmpfs",
            "--opt",
            "o=size=10m",
            "--label",
            "k=v",
        ],
    );
    w.backup(&vol);
    let copy = w.new_volume_name("opts-copy");
    w.ok(&["restore", "latest", "--to-volume", &copy]);
    let (a, b) = (volume_inspect(&vol), volume_inspect(&copy));
    assert_eq!(b["Driver"], a["Driver"]);
    assert_eq!(b["Options"], a["Options"]);
    assert_eq!(b["Labels"], a["Labels"]);
    // An existing volume that is not empty is refused without --force (see the test below).
    fs::write(mountpoint(&copy).join("there.txt"), b"x").unwrap();
    let r = w.run(&["restore", "latest", "--to-volume", &copy]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!("volume {copy} is not empty")),
        "{r:?}"
    );
}

/// Issue 10: `--to-volume` into an existing empty volume is allowed (as made by `docker volume create`); a
/// non-empty one is refused and left as it is, unless `--force`, which replaces its contents and keeps a safety
/// backup of them.
#[test]
fn issue10_to_volume_into_an_existing_empty_volume() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("src", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let backed_up = snap(&mp);
    w.backup(&vol);

    // Empty: restored into, kept as it was made (its label stays).
    let empty = w.volume_with("empty", &["--label", "made=by-user"]);
    let r = w.ok(&["restore", "latest", "--to-volume", &empty]);
    assert_same(&backed_up, &snap(&mountpoint(&empty)), "empty volume");
    assert!(!r.stdout.contains("(new)"), "{r:?}");
    assert_eq!(volume_inspect(&empty)["Labels"]["made"], "by-user");

    // Not empty: refused, untouched.
    let full = w.volume_with("full", &[]);
    let fmp = mountpoint(&full);
    fs::write(fmp.join("keep.txt"), b"mine").unwrap();
    let before = snap(&fmp);
    let r = w.run(&["restore", "latest", "--to-volume", &full]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "volume {full} is not empty: its contents would be replaced; pass --force"
        )),
        "{r:?}"
    );
    assert_same(&before, &snap(&fmp), "refused volume");

    // --force: replaced, with a safety backup of what was there.
    let r = w.ok(&["restore", "latest", "--to-volume", &full, "--force"]);
    assert_same(&backed_up, &snap(&fmp), "forced volume");
    assert!(r.stdout.contains("safety backup:"), "{r:?}");
}

/// The flush calls (`syncfs`, `sync_file_range`) a `voltar restore … -t <target>` makes, seen with strace, and
/// the run. None when strace is missing (a failure under CI: scripts/env.sh installs it).
fn flushes_of(w: &World, args: &[&str]) -> Option<(Vec<String>, Run)> {
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(
            !support::in_ci(),
            "strace is missing: scripts/env.sh installs it"
        );
        eprintln!("strace not installed: flush check skipped");
        return None;
    }
    let log = w.path(&support::unique("strace"));
    let out: Output = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=syncfs,sync_file_range,fsync,fdatasync",
            "-o",
        ])
        .arg(&log)
        .arg(assert_cmd::cargo::cargo_bin("voltar"))
        .args(args)
        .args(["-t", &w.target()])
        .current_dir(w.dir.path())
        .env("VOLTAR_STATE_DIR", w.path("state"))
        .env_remove("VOLTAR_CONFIG")
        .env_remove("VOLTAR_LOG")
        .output()
        .expect("running voltar under strace");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let calls = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|c| c.split('(').next())
        .map(str::to_string)
        .collect();
    Some((calls, run))
}

/// `--no-sync`: a restore into a new directory or an empty volume restores the same tree without flushing it
/// (no `syncfs`, no `sync_file_range`); one that replaces contents flushes anyway and says so. The default
/// flushes (what makes the check above mean something).
#[test]
fn no_sync_skips_the_flush_only_where_nothing_is_replaced() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("nosync", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    fs::write(mp.join("big.bin"), vec![7u8; 20 << 20]).unwrap();
    let backed_up = snap(&mp);
    let id = w.backup(&vol);
    let flushing = |c: &Vec<String>| c.iter().any(|c| c == "syncfs" || c == "sync_file_range");

    let dir = w.path("plain");
    let Some((calls, r)) = flushes_of(
        &w,
        &["restore", "latest", "--to-dir", dir.to_str().unwrap()],
    ) else {
        return;
    };
    assert_eq!(r.code, 0, "{r:?}");
    assert!(flushing(&calls), "the default restore flushes: {calls:?}");

    // Where nothing is replaced (a new directory, an empty volume, an import of a plain archive, here the backup's
    // own object, into a new directory): the same tree, and no flush.
    let (dir, imported) = (w.path("nosync"), w.path("imported"));
    let (dir_s, imported_s) = (dir.display().to_string(), imported.display().to_string());
    let empty = w.volume_with("nosync-empty", &[]);
    let archive = object_path(&w, &id, &vol).display().to_string();
    for (args, restored) in [
        (
            vec!["restore", "latest", "--to-dir", &dir_s, "--no-sync"],
            dir.clone(),
        ),
        (
            vec!["restore", "latest", "--to-volume", &empty, "--no-sync"],
            mountpoint(&empty),
        ),
        (
            vec![
                "restore",
                "--archive",
                &archive,
                "--to-dir",
                &imported_s,
                "--no-sync",
            ],
            imported.clone(),
        ),
    ] {
        let (calls, r) = flushes_of(&w, &args).unwrap();
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert_same(&backed_up, &snap(&restored), &format!("{args:?}"));
        assert!(!flushing(&calls), "{args:?} flushes nothing: {calls:?}");
        assert!(
            !r.all().contains("--no-sync not honoured"),
            "{args:?}: {r:?}"
        );
    }

    // Replacing contents (in place, here; no safety backup, whose archive is flushed on its own): flushed before
    // the swap, and the report says --no-sync was not honoured.
    scribble(&mp);
    let (calls, r) = flushes_of(
        &w,
        &[
            "restore",
            "latest",
            "--source",
            &vol,
            "--no-sync",
            "--no-safety-backup",
        ],
    )
    .unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    assert_same(&backed_up, &snap(&mp), "in place --no-sync");
    assert!(
        flushing(&calls),
        "a restore that replaces contents flushes: {calls:?}"
    );
    assert!(r.stdout.contains("--no-sync not honoured"), "{r:?}");

    // Refused for a dump: `--to-container` leaves durability to the database, `--to-file` always fsyncs its file.
    for to in ["--to-file", "--to-container"] {
        let r = w.run(&[
            "restore",
            "latest",
            "--source",
            "dump@x",
            to,
            "x",
            "--no-sync",
        ]);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stderr.contains("--no-sync") && r.stderr.contains(to),
            "{r:?}"
        );
    }
}

/// `--dry-run` lists what would be removed and changes nothing: no container stopped, no safety backup, the
/// volume byte-identical.
#[test]
fn dry_run_lists_removals_and_changes_nothing() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("dry", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let user = w.run_user("dry-user", &vol);
    w.backup(&vol);
    scribble(&mp);
    let now = snap(&mp);
    let started = started_at(&user);

    let r = w.ok(&["restore", "latest", "--source", &vol, "--dry-run"]);
    assert!(r.stdout.contains("stale.txt"), "{r:?}");
    assert!(r.stdout.contains("db/stale-dir/deeper/x"), "{r:?}");
    assert!(
        r.stdout.contains(&user),
        "names the container it would stop: {r:?}"
    );
    // Files in the backup are not removed; one changed since is listed as set back (issue 10).
    assert!(
        !r.stdout.contains("- hello.txt"),
        "files in the backup are not removed: {r:?}"
    );
    assert!(r.stdout.contains("~ hello.txt (size"), "{r:?}");
    assert_same(&now, &snap(&mp), "volume after --dry-run");
    assert_eq!(started_at(&user), started, "container untouched");
    assert_eq!(w.list()["backups"].as_array().unwrap().len(), 1);

    let j: Value =
        serde_json::from_str(&w.ok(&["--json", "restore", "latest", "--dry-run"]).stdout).unwrap();
    let rm = j["sources"][0]["would-remove"].as_array().unwrap();
    assert!(rm.iter().any(|p| p == "stale.txt"), "{j:#}");
}

/// `--path` restores only that subpath; everything else stays as it is now.
#[test]
fn path_restores_only_that_subpath() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("path", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let backed_up = snap(&mp);
    w.backup(&vol);
    scribble(&mp);
    let scribbled = snap(&mp);

    let r = w.ok(&[
        "--json",
        "restore",
        "latest",
        "--path",
        "app",
        "--no-safety-backup",
    ]);
    // The report counts what was written (issue 10: it counted the whole archive).
    let j: Value = serde_json::from_str(&r.stdout).unwrap();
    let under_app = backed_up
        .iter()
        .filter(|(p, n)| p.starts_with("app") && n.kind == crate::tree::Kind::File);
    let (files, bytes) = under_app.fold((0, 0), |(f, b), (_, n)| (f + 1, b + n.size));
    let counts = &j["sources"][0]["counts"];
    assert_eq!(
        (counts["files"].as_u64(), counts["bytes"].as_u64()),
        (Some(files), Some(bytes)),
        "{j:#}"
    );
    let after = snap(&mp);
    for (p, n) in &after {
        let from_backup = p.starts_with("app");
        let want = if from_backup { &backed_up } else { &scribbled };
        if p == Path::new(".") {
            // The root changes only in mtime (an entry was renamed in); the mode stays as it is now.
            assert_eq!(n.mode, scribbled[p].mode);
            continue;
        }
        assert_eq!(Some(n), want.get(p), "{}", p.display());
    }
    assert_eq!(
        after.len(),
        scribbled.len(),
        "no entry added or lost outside app/"
    );
    assert_eq!(
        fs::read(mp.join("hello.txt")).unwrap(),
        b"CHANGED after the backup\n"
    );

    let r = w.run(&["restore", "latest", "--path", "nope", "--no-safety-backup"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.all().contains("--path nope: not in the backup"), "{r:?}");
    let r = w.run(&["restore", "latest", "--path", "../etc"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("`..` is not allowed"), "{r:?}");
}

/// Issue 9: `--dry-run --path` lists what the restore of that path removes (the swap replaces it whole), by the
/// same name rules as the restore; before, a `--path` dry run said nothing would be removed.
#[test]
fn issue9_dry_run_with_path_lists_what_the_restore_removes() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("dry-path", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    w.backup(&vol);
    scribble(&mp);
    fs::write(mp.join("app/conf/extra.yml"), b"added after the backup\n").unwrap();
    fs::create_dir_all(mp.join("app/new/deeper")).unwrap();
    let now = snap(&mp);

    let j: Value = serde_json::from_str(
        &w.ok(&["--json", "restore", "latest", "--path", "app", "--dry-run"])
            .stdout,
    )
    .unwrap();
    let rm: Vec<&str> = j["sources"][0]["would-remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        rm,
        ["app/conf/extra.yml", "app/new", "app/new/deeper"],
        "only below app/, only what the backup lacks: {j:#}"
    );
    assert_same(&now, &snap(&mp), "volume after --dry-run");

    w.ok(&["restore", "latest", "--path", "app", "--no-safety-backup"]);
    for p in rm {
        assert!(!mp.join(p).exists(), "the restore removed {p}");
    }
    assert!(mp.join("stale.txt").exists(), "outside app/: kept");
}

/// `--before` picks the newest backup at or before the time; an unknown id is a clear usage error.
#[test]
fn before_picks_the_older_backup() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("before", &[]);
    let mp = mountpoint(&vol);
    fs::write(mp.join("v"), b"one").unwrap();
    let first = w.backup(&vol);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(mp.join("v"), b"two").unwrap();
    let second = w.backup(&vol);
    assert_ne!(first, second);

    let r = w.ok(&[
        "restore",
        "latest",
        "--before",
        &between,
        "--no-safety-backup",
    ]);
    assert!(r.stdout.contains(&first), "{r:?}");
    assert_eq!(fs::read(mp.join("v")).unwrap(), b"one");
    w.ok(&["restore", "latest", "--no-safety-backup"]);
    assert_eq!(fs::read(mp.join("v")).unwrap(), b"two");

    let r = w.run(&["restore", "latest", "--before", "2001-01-01T00:00:00Z"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no backup"), "{r:?}");
    let r = w.run(&["restore", "20010101T000000Z-abcd"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("no backup `20010101T000000Z-abcd`"),
        "{r:?}"
    );
    let r = w.run(&["restore", &first, "--before", "1d"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("--before only applies to `latest`"),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Corruption

fn object_path(w: &World, id: &str, vol: &str) -> PathBuf {
    w.path("target").join(id).join(format!("{vol}.tar.zst"))
}

fn flip(p: &Path, off: u64, mask: u8) {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(off)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= mask;
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&b).unwrap();
}

/// A corrupt archive makes an in-place restore fail with exit 1 naming the object; the live volume stays
/// byte-identical, and the running container was never stopped: the archive is extracted and checked into
/// staging before the users are stopped, so a bad archive costs the app no downtime.
#[test]
fn corrupt_archive_fails_restore_and_leaves_the_volume_untouched() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("corrupt", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let user = w.run_user("corrupt-user", &vol);
    let id = w.backup(&vol);
    scribble(&mp);
    let live = snap(&mp);
    let obj = object_path(&w, &id, &vol);
    let len = fs::metadata(&obj).unwrap().len();
    flip(&obj, len / 2, 0x40);
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &user]);

    let r = w.run(&["restore", "latest", "--source", &vol]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.all().contains(&format!("{vol}.tar.zst")),
        "names the object: {r:?}"
    );
    assert_same(&live, &snap(&mp), "live volume after a failed restore");
    assert_eq!(support::state(&user), "running");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &user]),
        started,
        "the user was stopped for a restore whose archive was bad: {r:?}"
    );
    assert!(
        fs::read_dir(mp.parent().unwrap()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("staging")),
        "no staging directory left behind"
    );
    // A cut archive (at a 512-byte boundary, which reads as a clean tar end) fails the same way.
    let data = fs::read(&obj).unwrap();
    flip(&obj, len / 2, 0x40);
    let f = fs::OpenOptions::new().write(true).open(&obj).unwrap();
    f.set_len((data.len() as u64 / 2) & !511).unwrap();
    let r = w.run(&["restore", &id, "--source", &vol, "--no-safety-backup"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&format!("{id}/{vol}.tar.zst")), "{r:?}");
    assert_same(&live, &snap(&mp), "live volume after a cut archive");
    assert_eq!(support::state(&user), "running");
    // Into a directory the restore makes: "nothing was changed" holds there too, no empty directory is left
    // (the flipped object again: whole size, so it fails while extracting, after the directory was made).
    fs::write(&obj, &data).unwrap();
    let dir = w.path("made-by-restore");
    let r = w.run(&[
        "restore",
        &id,
        "--source",
        &vol,
        "--to-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!dir.exists(), "{} left behind: {r:?}", dir.display());
}

/// The safety backup is taken from the old contents after the swap, while the users run again: they are down
/// for the stop, the swap and the start only, never while the safety copy is read and uploaded (to a slow or
/// dead S3 target that could be minutes). Its manifest starts after the restarted container's start.
#[test]
fn the_safety_backup_runs_after_the_users_are_back() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("aftersafety", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let running = w.run_user("aftersafety-run", &vol);
    w.backup(&vol);
    scribble(&mp);
    let scribbled = snap(&mp);

    let r = w.ok(&["restore", "latest", "--source", &vol]);
    assert_eq!(support::state(&running), "running", "{r:?}");
    let restarted: chrono::DateTime<chrono::Utc> = started_at(&running).parse().unwrap();
    let list = w.list();
    let safety = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| {
            b["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "pre-restore"))
        })
        .unwrap_or_else(|| panic!("no safety backup: {list:#}"));
    let id = safety["id"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(
        &fs::read(Path::new(&w.target()).join(id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let began: chrono::DateTime<chrono::Utc> =
        manifest["started-at"].as_str().unwrap().parse().unwrap();
    assert!(
        began > restarted,
        "safety backup began {began} before the user was started again at {restarted}: {r:?}"
    );
    // It holds what was there before the restore, and nothing of it is left beside the volume.
    let copy = w.new_volume_name("aftersafety-copy");
    w.ok(&["restore", id, "--to-volume", &copy]);
    assert_same(&scribbled, &snap(&mountpoint(&copy)), "safety backup");
    let beside: Vec<_> = fs::read_dir(mp.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".voltar-"))
        .collect();
    assert!(beside.is_empty(), "left beside the volume: {beside:?}");
}

/// The safety backup goes to every target the job writes to, not only the one restored from (issue 10): with a
/// job on two local targets, restoring from the first leaves a `pre-restore` backup in both.
#[test]
fn the_safety_backup_goes_to_every_target_of_the_job() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("twosafety", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let (a, b) = (w.path("a"), w.path("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let cfg = w.path("two.toml");
    fs::write(
        &cfg,
        format!(
            "[target.a]\ntype = \"local\"\npath = \"{}\"\n[target.b]\ntype = \"local\"\npath = \"{}\"\n[job.default]\ntargets = [\"a\", \"b\"]\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let r = w.voltar(&["-c", &cfg, "backup", "--only", &vol]);
    assert_eq!(r.code, 0, "{r:?}");
    scribble(&mp);

    let r = w.voltar(&["-c", &cfg, "restore", "latest", "--source", &vol, "-t", "a"]);
    assert_eq!(r.code, 0, "{r:?}");
    for t in ["a", "b"] {
        let l = w.voltar(&["-c", &cfg, "--json", "list", "-t", t]);
        let v: Value = serde_json::from_str(&l.stdout).unwrap_or_else(|_| panic!("{l:?}"));
        let safety = v["backups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| {
                b["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == "pre-restore"))
            })
            .count();
        assert_eq!(safety, 1, "target {t}: {l:?} {r:?}");
    }
}

/// A safety backup that cannot be written is found out before anything is stopped: the target restored from is
/// a read-only view (reading works, the test write fails). The restore fails saying so, the user container is
/// never stopped and the volume is untouched.
#[test]
fn a_safety_backup_that_cannot_be_written_stops_nothing() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("rosafety", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let running = w.run_user("rosafety-run", &vol);
    w.backup(&vol);
    scribble(&mp);
    let scribbled = snap(&mp);
    let started_before = started_at(&running);
    let ro = w.path("ro-target");
    let _view = Tmpfs::read_only_view(Path::new(&w.target()), &ro);

    let r = w.voltar(&[
        "restore",
        "latest",
        "--source",
        &vol,
        "-t",
        ro.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.all().contains("the safety backup cannot be written"),
        "{r:?}"
    );
    assert!(r.all().contains("--no-safety-backup"), "{r:?}");
    // The report does not claim a stop that never happened (it used to print "containers stopped: …").
    assert!(!r.stdout.contains("stopped:"), "{r:?}");
    let j = w.voltar(&[
        "--json",
        "restore",
        "latest",
        "--source",
        &vol,
        "-t",
        ro.to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(
        report["sources"][0]["stopped"],
        serde_json::json!([]),
        "{j:?}"
    );
    assert_eq!(
        report["sources"][0]["stop"],
        serde_json::json!([running]),
        "{j:?}"
    );
    assert_eq!(started_at(&running), started_before, "never stopped: {r:?}");
    assert_eq!(support::state(&running), "running");
    assert_same(&scribbled, &snap(&mp), "the volume is untouched");
}

/// The target fills up during the safety backup, which runs after the swap: the restore itself is done (the
/// volume holds the backup, the user runs), but the previous contents are not lost: they stay on disk where the
/// report says, and the exit code is 1.
#[test]
fn a_safety_backup_failing_after_the_swap_keeps_the_previous_contents() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("fullsafety", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let running = w.run_user("fullsafety-run", &vol);
    let small = w.path("small-target");
    let _fs = Tmpfs::mount(&small, "4m");
    let small_t = small.to_str().unwrap();
    let backed_up = snap(&mp);
    w.ok(&["backup", "--only", &vol, "-t", small_t]);
    // What is there at restore time does not fit in what is left of the target (random: zstd cannot shrink it).
    scribble(&mp);
    let mut rng = StdRng::seed_from_u64(26);
    let mut buf = vec![0u8; 6 << 20];
    rng.fill(&mut buf[..]);
    fs::write(mp.join("big.bin"), &buf).unwrap();
    let before = snap(&mp);

    let r = w.voltar(&["restore", "latest", "--source", &vol, "-t", small_t]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_same(&backed_up, &snap(&mp), "the volume holds the backup");
    assert_eq!(support::state(&running), "running", "{r:?}");
    let volume_dir = mp.parent().unwrap();
    let kept = staging_dirs(volume_dir);
    assert_eq!(kept.len(), 1, "{kept:?} {r:?}");
    assert_same(&before, &snap(&kept[0]), "the previous contents, kept");
    assert!(
        r.all().contains("without a safety backup") && r.all().contains(kept[0].to_str().unwrap()),
        "the report says where the previous contents are: {r:?}"
    );
    // Nothing half-written in the target looks like a safety backup.
    let list = w.voltar(&["list", "--json", "-t", small_t]);
    assert!(!list.stdout.contains("pre-restore"), "{list:?}");
    // And `recover` does not take them away (the journal forgot them: the report named them).
    let rec = w.voltar(&["recover"]);
    assert_eq!(rec.code, 0, "{rec:?}");
    assert!(kept[0].exists());
    fs::remove_dir_all(&kept[0]).unwrap();
}

/// Flips and cuts at seeded random offsets of a stored archive: `verify` fails every one, naming the object;
/// a sample of them also fails `restore --to-volume` and leaves no volume behind. The intact backup passes
/// `verify` and `verify --restore-test`, which removes its scratch volume.
#[test]
fn verify_and_restore_detect_flips_and_cuts_at_random_offsets() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("flip", &[]);
    let mp = mountpoint(&vol);
    generate_tree(&mp, 42);
    let id = w.backup(&vol);
    let r = w.ok(&["verify", &id]);
    assert!(r.stdout.contains("ok "), "{r:?}");
    let r = w.ok(&["verify", "--restore-test", "latest"]);
    assert!(r.stdout.contains("restore-tested"), "{r:?}");
    assert!(scratch_volumes(&vol).is_empty(), "scratch volume removed");

    let obj = object_path(&w, &id, &vol);
    let good = fs::read(&obj).unwrap();
    let key = format!("{id}/{vol}.tar.zst");
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..20 {
        let cut = i % 4 == 3;
        let off = rng.gen_range(0..good.len());
        if cut {
            fs::write(&obj, &good[..off]).unwrap();
        } else {
            let mut bad = good.clone();
            bad[off] ^= rng.gen_range(1..=255u8);
            fs::write(&obj, &bad).unwrap();
        }
        let what = format!(
            "{} at {off} of {}",
            if cut { "cut" } else { "flip" },
            good.len()
        );
        let r = w.run(&["verify", &id]);
        assert_eq!(r.code, 1, "{what}: {r:?}");
        assert!(
            r.stdout.contains(&format!("FAILED  {id} {vol}: {key}")),
            "{what}: {r:?}"
        );
        if i % 5 == 0 {
            let copy = w.new_volume_name("flip-copy");
            let r = w.run(&["restore", &id, "--to-volume", &copy]);
            assert_eq!(r.code, 1, "{what}: {r:?}");
            assert!(r.stderr.contains(&key), "{what}: {r:?}");
            // A cut archive no longer has the recorded size: it fails the check before the volume is made.
            assert!(
                r.stdout.contains(if cut {
                    "nothing was stopped or changed"
                } else {
                    "the new volume was removed again"
                }),
                "{what}: {r:?}"
            );
            assert!(!volume_exists(&copy), "{what}: half-made volume removed");
        }
    }
    fs::write(&obj, &good).unwrap();
    w.ok(&["verify", "--all"]);
}

/// A damaged manifest: `list` reports it as unreadable (exit 1), `verify` fails, and restoring that backup
/// fails with a message that says the manifest is unreadable, not that the backup does not exist. Every flip
/// and cut at seeded offsets is detected.
#[test]
fn damaged_manifest_is_reported_not_used() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("manifest", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let id = w.backup(&vol);
    let mpath = w.path("target").join(&id).join("manifest.json");
    let good = fs::read(&mpath).unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    for i in 0..20 {
        let off = rng.gen_range(0..good.len());
        let cut = i % 4 == 3;
        if cut {
            fs::write(&mpath, &good[..off]).unwrap();
        } else {
            let mut bad = good.clone();
            bad[off] ^= 1 << rng.gen_range(0..8);
            fs::write(&mpath, &bad).unwrap();
        }
        let what = format!(
            "{} at {off} ({:?})",
            if cut { "cut" } else { "flip" },
            String::from_utf8_lossy(&good[off.saturating_sub(10)..(off + 10).min(good.len())])
        );
        let r = w.run(&["list"]);
        assert_eq!(r.code, 1, "{what}: {r:?}");
        assert!(
            r.stdout.contains(&format!("unreadable: {id}")),
            "{what}: {r:?}"
        );
        let r = w.run(&["verify", "--all"]);
        assert_eq!(r.code, 1, "{what}: {r:?}");
        assert!(
            r.stdout.contains(&format!("FAILED  backup {id}")),
            "{what}: {r:?}"
        );
        if i % 5 == 0 {
            for spec in [id.as_str(), "latest"] {
                let r = w.run(&["verify", spec]);
                assert_eq!(r.code, 1, "{what}: verify {spec}: {r:?}");
                assert!(
                    r.stdout.contains(&format!("FAILED  backup {id}")),
                    "{what}: {r:?}"
                );
            }
            let r = w.run(&["restore", &id, "--no-safety-backup"]);
            assert_eq!(r.code, 2, "{what}: {r:?}");
            assert!(r.stderr.contains("unreadable"), "{what}: {r:?}");
        }
    }
    fs::write(&mpath, &good).unwrap();
    w.ok(&["list"]);
}

// ---------------------------------------------------------------------------------------------------------------
// Interop: archives of other tools through --archive

/// A plain source tree for interop (whole-second mtimes: GNU tar's default format keeps only seconds).
fn interop_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("etc/conf.d/a.conf"), b"a = 1\n").unwrap();
    fs::write(root.join("bin"), vec![0x7fu8; 9000]).unwrap();
    chmod(&root.join("bin"), 0o4755);
    fs::hard_link(root.join("bin"), root.join("bin-again")).unwrap();
    symlink("etc/conf.d/a.conf", root.join("a-link")).unwrap();
    mkfifo(&root.join("fifo"));
    chown(&root.join("etc"), 33, 33);
    let mut all: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .min_depth(1)
        .contents_first(true)
        .into_iter()
        .map(|e| e.unwrap().path().to_path_buf())
        .collect();
    all.push(root.to_path_buf());
    chmod(root, 0o750);
    chown(root, 4321, 4321);
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_500_000_000 + i as i64 * 1000, 0);
    }
}

fn gnu_tar(args: &[&str]) {
    let out = std::process::Command::new("tar")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Archives made by GNU tar (`--zstd`, `-z`) and one laid out as offen/docker-volume-backup writes them
/// (absolute `/backup/<name>/…` entries, gzip) import through `restore --archive` and equal their source.
#[test]
fn archives_of_other_tools_import_and_equal_their_source() {
    require_docker!();
    let mut w = World::new();
    // offen/docker-volume-backup archives the volumes mounted under /backup with absolute names:
    // `/backup/`, `/backup/<name>/`, `/backup/<name>/…`.
    let offen_root = w.path("offen-root");
    let src = offen_root.join("appdata");
    fs::create_dir_all(&src).unwrap();
    interop_tree(&src);
    let want = snap(&src);
    let s = src.display().to_string();
    let zst = w.path("plain.tar.zst").display().to_string();
    let gz = w.path("plain.tar.gz").display().to_string();
    let offen = w
        .path("backup-2024-01-01T00-00-00.tar.gz")
        .display()
        .to_string();
    gnu_tar(&["--zstd", "-cf", &zst, "-C", &s, "."]);
    gnu_tar(&["-czf", &gz, "-C", &s, "."]);
    gnu_tar(&[
        "-czPf",
        &offen,
        "--transform",
        "s,^\\.,/backup,",
        "-C",
        &offen_root.display().to_string(),
        ".",
    ]);
    let listing = std::process::Command::new("tar")
        .args(["-tPzf", &offen])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l == "/backup/appdata/etc/conf.d/a.conf"),
        "offen layout: {listing}"
    );
    for (file, strip) in [(&zst, "0"), (&gz, "0"), (&offen, "2")] {
        let v = w.new_volume_name("import");
        let r = w.voltar(&[
            "restore",
            "--archive",
            file,
            "--to-volume",
            &v,
            "--strip-components",
            strip,
        ]);
        assert_eq!(r.code, 0, "{file}: {r:?}");
        if strip == "2" {
            assert!(
                r.all().contains("leading `/`"),
                "warns about absolute names: {r:?}"
            );
        }
        assert_same(&want, &snap(&mountpoint(&v)), file);
    }
    // Importing over a non-empty volume needs --force.
    let v = w.new_volume_name("import-busy");
    docker(&["volume", "create", &v]);
    fs::write(mountpoint(&v).join("keep"), b"k").unwrap();
    let r = w.voltar(&["restore", "--archive", &gz, "--to-volume", &v]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--force"), "{r:?}");
    assert!(mountpoint(&v).join("keep").exists());
}

// ---------------------------------------------------------------------------------------------------------------
// Issue 8: restore checks before it stops, honours the stop-timeout label, and cleans up after a kill.

/// The archive is checked before any container is stopped: a missing object, or one whose size differs from
/// the manifest's, fails that source (exit 1, naming the object) without stopping the running user.
#[test]
fn issue8_missing_or_cut_archive_fails_before_anything_is_stopped() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("precheck", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let user = w.run_user("precheck-user", &vol);
    let id = w.backup(&vol);
    scribble(&mp);
    let live = snap(&mp);
    let started = started_at(&user);
    let obj = object_path(&w, &id, &vol);
    let data = fs::read(&obj).unwrap();

    // Cut (at a 512-byte boundary): the size no longer matches the manifest.
    fs::write(&obj, &data[..(data.len() / 2) & !511]).unwrap();
    let r = w.run(&["restore", "latest", "--source", &vol]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("{id}/{vol}.tar.zst")) && r.stderr.contains("bytes"),
        "names the object and the size: {r:?}"
    );
    assert!(r.all().contains("nothing was stopped"), "{r:?}");
    assert_eq!(started_at(&user), started, "the user was never stopped");

    // Missing.
    fs::remove_file(&obj).unwrap();
    let r = w.run(&["restore", "latest", "--source", &vol]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("{id}/{vol}.tar.zst")) && r.stderr.contains("missing"),
        "names the missing object: {r:?}"
    );
    assert_eq!(started_at(&user), started, "the user was never stopped");
    assert_eq!(support::state(&user), "running");
    assert_same(&live, &snap(&mp), "the volume is untouched");
    let list = w.list();
    assert_eq!(
        list["backups"].as_array().unwrap().len(),
        1,
        "no safety backup was taken either: {list:#}"
    );
}

/// Restore stops a container with its `voltar.stop-timeout` label, like backup, not the config's value: a
/// container that ignores SIGTERM (busybox `sleep` as PID 1) is killed only when the label's 6 s are up.
#[test]
fn issue8_restore_honours_the_stop_timeout_label() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("stoptimeout", &[]);
    let mp = mountpoint(&vol);
    fill_simple(&mp);
    let user = w.cleanup.run(
        "stubborn",
        &[
            "--label",
            "voltar.stop-timeout=6s",
            "-v",
            &format!("{vol}:/data"),
        ],
    );
    w.backup(&vol);
    let cfg = w.path("quick-stop.toml");
    fs::write(&cfg, "[quiesce]\nstop-timeout = \"1s\"\n").unwrap();
    let cfg = cfg.display().to_string();

    let t0 = std::time::Instant::now();
    let r = w.run(&[
        "-c",
        &cfg,
        "restore",
        "latest",
        "--source",
        &vol,
        "--no-safety-backup",
    ]);
    let took = t0.elapsed();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        took >= std::time::Duration::from_secs(6),
        "stopped after {took:?}: the label's 6 s grace period was not used"
    );
    assert_eq!(support::state(&user), "running");
}

/// `.voltar-staging-*` directories beside the volume's `_data`.
fn staging_dirs(volume_dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(volume_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".voltar-staging-")
        })
        .map(|e| e.path())
        .collect()
}

/// A restore running as a child process, SIGKILLed (no cleanup at all) once it is extracting into its staging
/// directory (the users are still running then).
fn kill_restore_while_extracting(w: &World, vol: &str, volume_dir: &Path) -> PathBuf {
    kill_restore_when(w, vol, volume_dir, &["--no-safety-backup"], |_| true)
}

/// A restore (with `extra` flags) running as a child process, SIGKILLed once its staging directory has started
/// to fill and `ready` says so; returns the staging directory.
fn kill_restore_when(
    w: &World,
    vol: &str,
    volume_dir: &Path,
    extra: &[&str],
    ready: impl Fn(&Path) -> bool,
) -> PathBuf {
    let target = w.target();
    let mut args = vec!["restore", "latest", "--source", vol, "-t", &target];
    args.extend_from_slice(extra);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("voltar"))
        .args(&args)
        .current_dir(w.dir.path())
        .env("VOLTAR_STATE_DIR", w.path("state"))
        .env_remove("VOLTAR_CONFIG")
        .env_remove("VOLTAR_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let staging = loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the restore finished ({st}) before it could be killed: use a bigger volume");
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "the restore never reached the point to kill it at"
        );
        // Extracting: the staging directory has started to fill.
        if let Some(s) = staging_dirs(volume_dir)
            .into_iter()
            .find(|s| fs::read_dir(s).is_ok_and(|mut d| d.next().is_some()) && ready(s))
        {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    staging
}

/// Ctrl-C while extracting stops the extraction at once, not at the end of the archive: exit 130, the volume as
/// it was, no staging directory left, and far sooner than the whole restore takes.
#[test]
fn sigint_while_extracting_stops_at_once_and_changes_nothing() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("sigint", &[]);
    let mp = mountpoint(&vol);
    // 16 × 32 MiB of incompressible data: the extraction takes a while.
    support::fill_random(&mp, 16, 32 << 20);
    let id = w.backup(&vol);
    fs::write(mp.join("after-the-backup.txt"), b"kept").unwrap();
    let before = snap(&mp);

    // How long the whole restore takes here.
    let whole = std::time::Instant::now();
    let dir = w.path("whole");
    w.ok(&["restore", "latest", "--to-dir", dir.to_str().unwrap()]);
    let whole = whole.elapsed();

    // Interrupted as soon as its staging directory (in `staging_in`) holds data: it stops at once, changes
    // nothing and leaves no staging directory.
    let interrupted = |args: &[&str], staging_in: &Path, says: &str| {
        let (out, stderr, stopped) = interrupt_when(&w, args, "extracting", &|_| {
            staging_dirs(staging_in)
                .iter()
                .any(|s| fs::read_dir(s).is_ok_and(|mut d| d.next().is_some()))
        });
        assert_eq!(out.status.code(), Some(130), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            stopped < whole / 3,
            "{args:?} stopped {stopped:?} after SIGINT; the whole restore takes {whole:?}: {stderr}"
        );
        assert!(
            staging_dirs(staging_in).is_empty(),
            "{args:?} left staging: {stderr}"
        );
    };
    // In place.
    let volume_dir = mp.parent().unwrap().to_path_buf();
    interrupted(
        &["restore", "latest", "--source", &vol, "--no-safety-backup"],
        &volume_dir,
        "interrupted before the swap: nothing was changed",
    );
    assert_same(&before, &snap(&mp), "volume after an interrupted restore");
    // An import of a plain archive (the backup's own object) into a new directory.
    let object = object_path(&w, &id, &vol);
    let imported = w.path("imported");
    interrupted(
        &[
            "restore",
            "--archive",
            object.to_str().unwrap(),
            "--to-dir",
            imported.to_str().unwrap(),
        ],
        w.dir.path(),
        "voltar: interrupted",
    );
    assert!(!imported.exists(), "the import's new directory is removed");
}

/// The scratch volumes `verify --restore-test` has for source `vol` (named after it, labelled `voltar.scratch`).
fn scratch_volumes(vol: &str) -> Vec<String> {
    let prefix = format!("voltar-verify-{vol}-");
    docker(&["volume", "ls", "-q", "--filter", "label=voltar.scratch"])
        .lines()
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Ctrl-C during `verify --restore-test` stops at once, not at the end of the object: while it checks the stored
/// object (no scratch volume yet) and while it restores into its scratch volume. Exit 130, far sooner than the
/// whole verify takes, and no scratch volume is left.
#[test]
fn sigint_during_a_restore_test_stops_at_once_and_removes_its_scratch_volume() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("vsigint", &[]);
    // 32 × 32 MiB of incompressible data: checking and restoring each take a while (the whole verify about 3.5 s
    // here), and removing what was restored so far (about 0.1 s) stays well within the bound below.
    support::fill_random(&mountpoint(&vol), 32, 32 << 20);
    let id = w.backup(&vol);
    let object = object_path(&w, &id, &vol);

    let whole = std::time::Instant::now();
    let r = w.ok(&["verify", "--restore-test", &id]);
    let whole = whole.elapsed();
    assert!(r.stdout.contains("restore-tested"), "{r:?}");
    assert!(scratch_volumes(&vol).is_empty());

    // Interrupted once `ready` holds (polled); it stops at once and leaves no scratch volume.
    let interrupted = |phase: &str, ready: &dyn Fn(u32) -> bool| {
        let (out, stderr, stopped) =
            interrupt_when(&w, &["verify", "--restore-test", &id], phase, ready);
        assert_eq!(out.status.code(), Some(130), "{phase}: {stderr}");
        assert!(
            stderr.contains("voltar: interrupted: no scratch volume was left"),
            "{phase}: {stderr}"
        );
        assert!(
            stopped < whole / 3,
            "{phase}: stopped {stopped:?} after SIGINT; the whole verify takes {whole:?}: {stderr}"
        );
        let left = scratch_volumes(&vol);
        assert!(
            left.is_empty(),
            "{phase}: scratch volumes left {left:?}: {stderr}"
        );
    };
    // Checking: the object is open and no scratch volume exists yet.
    interrupted("checking the object", &|pid| {
        let open = fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|p| p == object))
        });
        open && scratch_volumes(&vol).is_empty()
    });
    // Restoring: the scratch volume holds data.
    interrupted("restoring into the scratch volume", &|_| {
        scratch_volumes(&vol)
            .iter()
            .any(|s| fs::read_dir(mountpoint(s)).is_ok_and(|mut d| d.next().is_some()))
    });
}

/// Start `voltar <args>`, wait until `ready(pid)` holds (polled; it must not end first, nor take over 120 s —
/// `what` names that moment), then SIGINT it: its output, stderr, and how long it took to stop.
fn interrupt_when(
    w: &World,
    args: &[&str],
    what: &str,
    ready: &dyn Fn(u32) -> bool,
) -> (Output, String, std::time::Duration) {
    let mut child = w.spawn(args);
    let start = std::time::Instant::now();
    while !ready(child.id()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} ended before it was {what}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "{args:?} never {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    support::interrupt(child)
}

/// `voltar recover` after a killed restore: it removes the staging directory and says so.
fn recover_removes(w: &World, staging: &Path, volume_dir: &Path) -> Run {
    assert!(staging.exists());
    let r = w.voltar(&["recover"]);
    assert_eq!(r.code, 0, "{r:?}");
    let name = staging.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        r.stdout.contains(&name) && r.stdout.contains("removed"),
        "recover reports the staging directory it removed: {r:?}"
    );
    assert!(
        staging_dirs(volume_dir).is_empty(),
        "{:?}",
        staging_dirs(volume_dir)
    );
    r
}

/// Row 26: a restore killed with SIGKILL while it extracts leaves its staging tree behind, its container still
/// running (it is stopped only for the swap). `voltar recover` removes the staging tree, saying so. Killed
/// after the swap, while the safety backup of the old contents runs (the users are back by then), the old
/// contents are the only copy of what was there: they are left where they are, and `recover` names them and
/// keeps them. After a third kill, the next `restore` removes the staging tree itself (and says so) before
/// doing its work.
#[test]
fn issue8_killed_restore_staging_is_removed_by_recover_and_the_next_restore() {
    require_docker!();
    let mut w = World::new();
    let vol = w.volume_with("killrestore", &[]);
    let mp = mountpoint(&vol);
    let volume_dir = mp.parent().unwrap().to_path_buf();
    let mut rng = StdRng::seed_from_u64(8);
    for i in 0..48 {
        let mut buf = vec![0u8; 4 << 20];
        rng.fill(&mut buf[..]);
        fs::write(mp.join(format!("blob{i}")), &buf).unwrap();
    }
    fs::write(mp.join("marker"), "backed up").unwrap();
    let user = w.run_user("killrestore-user", &vol);
    w.backup(&vol);
    fs::write(mp.join("marker"), "changed since").unwrap();
    let live = snap(&mp);

    let staging = kill_restore_while_extracting(&w, &vol, &volume_dir);
    assert_eq!(
        support::state(&user),
        "running",
        "extracting into staging does not stop the users"
    );
    recover_removes(&w, &staging, &volume_dir);

    // Killed during the safety backup: after the swap, with the users running again.
    let staging = kill_restore_when(&w, &vol, &volume_dir, &[], |_| {
        fs::read_to_string(mp.join("marker")).is_ok_and(|m| m == "backed up")
            && support::state(&user) == "running"
    });
    assert_eq!(support::state(&user), "running");
    assert_eq!(fs::read_to_string(mp.join("marker")).unwrap(), "backed up");
    assert_same(&live, &snap(&staging), "the previous contents, kept");
    let r = w.voltar(&["recover"]);
    assert_eq!(r.code, 0, "{r:?}");
    let name = staging.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        r.stdout.contains(&name) && r.stdout.contains("kept") && !r.stdout.contains("removed"),
        "recover names the kept previous contents and leaves them: {r:?}"
    );
    assert_same(
        &live,
        &snap(&staging),
        "the previous contents, after recover",
    );
    // The user decides what to do with them: here, they are not needed.
    fs::remove_dir_all(&staging).unwrap();

    let staging = kill_restore_while_extracting(&w, &vol, &volume_dir);
    let name = staging.file_name().unwrap().to_string_lossy().into_owned();
    let r = w.ok(&["restore", "latest", "--source", &vol, "--no-safety-backup"]);
    assert!(
        r.all().contains(&name) && r.all().contains("removed"),
        "the next restore reports the staging directory it removed: {r:?}"
    );
    assert!(
        staging_dirs(&volume_dir).is_empty(),
        "{:?}",
        staging_dirs(&volume_dir)
    );
    assert_eq!(fs::read_to_string(mp.join("marker")).unwrap(), "backed up");
    assert_eq!(support::state(&user), "running");
}
