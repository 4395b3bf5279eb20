//! Streamed database dumps against the real Docker Engine (issue 13, "Streamed dumps"; acceptance rows 1, 2, 6,
//! 7, 16): a real PostgreSQL under write load dumped with `voltar.dump=postgres` is never paused or stopped and
//! restores with `--to-container` into a fresh PostgreSQL with its invariant intact; a failing dump fails its
//! source only and leaves nothing stored; dumps are verified and restored as streams, not tars.
//!
//! The PostgreSQL and MariaDB tests need the images `voltar-test-postgres:15` and `voltar-test-mariadb:10.11`
//! (`scripts/pg-image.sh`, `scripts/mariadb-image.sh`, which `scripts/test.sh` runs): they skip loudly without
//! them, and fail under CI. The others use the busybox test image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use voltar::storage::Storage;

use crate::frozen::Watch;
use crate::require_docker;
use crate::support::{self, docker, docker_raw, source, unique, Cleanup, Out};

const BIN: &str = env!("CARGO_BIN_EXE_voltar");
const PG_IMAGE: &str = "voltar-test-postgres:15";

const MARIADB_IMAGE: &str = "voltar-test-mariadb:10.11";

/// Whether the PostgreSQL test image exists; under CI its absence is a failure.
fn pg_available() -> bool {
    image_available(PG_IMAGE, "scripts/pg-image.sh")
}

/// Whether the database test image `image` (built by `script`) exists; under CI its absence is a failure.
fn image_available(image: &str, script: &str) -> bool {
    if !support::docker_available() {
        return false;
    }
    let ok = docker_raw(&["image", "inspect", image]).status.success();
    if !ok {
        let msg = format!("{image} is not available: run {script}");
        if support::in_ci() {
            panic!("{msg}");
        }
        eprintln!("\n!!! SKIPPING: {msg}\n");
    }
    ok
}

/// Per-test surroundings: a state dir, a working dir without config files, a backup dir.
struct Env {
    tmp: tempfile::TempDir,
    state: PathBuf,
    cwd: PathBuf,
    target: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let cwd = tmp.path().join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        let target = tmp.path().join("backups");
        Env {
            state,
            cwd,
            target,
            tmp,
        }
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(&self.cwd)
            .env("VOLTAR_STATE_DIR", &self.state)
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run voltar").into()
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    fn t(&self) -> String {
        self.target.to_string_lossy().into_owned()
    }

    /// `backup --json` of the named sources to the local target.
    fn backup(&self, sources: &[&str]) -> Out {
        let t = self.t();
        let mut args = vec!["backup", "--json", "-t", t.as_str()];
        for s in sources {
            args.extend_from_slice(&["--only", s]);
        }
        self.run(&args)
    }

    /// A config file with `text`; its path.
    fn config(&self, text: &str) -> String {
        let p = self.tmp.path().join("voltar.toml");
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// The one backup in the target: (id, manifest).
    fn only_manifest(&self) -> (String, Value) {
        let mut found = vec![];
        for e in std::fs::read_dir(&self.target)
            .into_iter()
            .flatten()
            .flatten()
        {
            let m = e.path().join("manifest.json");
            if m.exists() {
                let v: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
                found.push((e.file_name().to_string_lossy().into_owned(), v));
            }
        }
        assert_eq!(found.len(), 1, "one backup expected: {found:?}");
        found.pop().unwrap()
    }

    /// Every file under the target (names relative to it), temporaries included.
    fn stored_files(&self) -> Vec<String> {
        let mut out = vec![];
        for e in walk(&self.target) {
            out.push(
                e.strip_prefix(&self.target)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        out.sort();
        out
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn json(o: &Out) -> Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {o:?}"))
}

/// Start a PostgreSQL container of the test image (cleaned up by `c`), wait until it takes connections.
fn start_pg(c: &mut Cleanup, tag: &str, extra: &[&str]) -> (String, String) {
    let name = unique(tag);
    let vol = unique(&format!("{tag}-data"));
    c.containers.push(name.clone());
    c.volumes.push(vol.clone());
    let mount = format!("{vol}:/var/lib/postgresql/data");
    let mut args = vec!["run", "-d", "--name", name.as_str(), "-v", mount.as_str()];
    args.extend_from_slice(extra);
    args.push(PG_IMAGE);
    docker(&args);
    let start = Instant::now();
    loop {
        let ok = docker_raw(&["exec", &name, "pg_isready", "-q", "-h", "/tmp"])
            .status
            .success();
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "postgres in {name} did not come up: {}",
            String::from_utf8_lossy(&docker_raw(&["logs", &name]).stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (name, vol)
}

/// Run SQL in `container` as the superuser; the output (unaligned, tuples only).
fn psql(container: &str, sql: &str) -> String {
    docker(&[
        "exec",
        container,
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-A",
        "-t",
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-c",
        sql,
    ])
}

fn history_rows(container: &str) -> u64 {
    psql(container, "SELECT count(*) FROM history")
        .parse()
        .unwrap()
}

/// Accounts whose balances always add up to this, whatever the transfers between them.
const TOTAL: i64 = 100 * 1000;

/// The bank: 100 accounts of 1000, and a history row per transfer.
fn create_bank(container: &str) {
    psql(
        container,
        "CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL); \
         INSERT INTO acct SELECT g, 1000 FROM generate_series(1, 100) g; \
         CREATE TABLE history (n bigserial PRIMARY KEY, a int, b int, x int);",
    );
}

/// Transfers under load: pgbench runs one transaction per transfer (debit, credit, history) on 2 connections
/// for up to 10 minutes (the container is removed at the end of the test).
fn start_transfers(container: &str) {
    let script = "\\set a random(1, 100)\n\\set b random(1, 100)\n\\set x random(1, 50)\nBEGIN;\n\
                  UPDATE acct SET bal = bal - :x WHERE id = :a;\n\
                  UPDATE acct SET bal = bal + :x WHERE id = :b;\n\
                  INSERT INTO history (a, b, x) VALUES (:a, :b, :x);\nEND;\n";
    docker(&[
        "exec",
        container,
        "sh",
        "-c",
        &format!("printf '%s' '{script}' > /tmp/transfer.sql"),
    ]);
    docker(&[
        "exec",
        "-d",
        container,
        "pgbench",
        "-n",
        "-U",
        "postgres",
        "-c",
        "2",
        "-T",
        "600",
        "-f",
        "/tmp/transfer.sql",
        "postgres",
    ]);
}

/// Wait until the history has grown past `n` rows: the load is running.
fn wait_for_writes_past(container: &str, n: u64) -> u64 {
    let start = Instant::now();
    loop {
        let now = history_rows(container);
        if now > n {
            return now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no transfer happened in {container} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 13: a PostgreSQL under write load, backed up with `voltar.dump=postgres`: the container is never paused
/// or stopped (for its dump nor for its volume, which is still archived), the dump restores with
/// `--to-container` into a fresh PostgreSQL, and there the balances add up: the dump is one consistent instant
/// taken while transfers went on before and after it.
#[test]
fn issue13_postgres_dump_under_write_load_is_consistent_and_never_quiesces() {
    if !pg_available() {
        return;
    }
    let env = Env::new();
    let mut c = Cleanup::default();
    let (db, vol) = start_pg(
        &mut c,
        "pg",
        &[
            "-l",
            "voltar.dump=postgres",
            "-e",
            "POSTGRES_PASSWORD=pg-canary-9f3e1c",
        ],
    );
    create_bank(&db);
    start_transfers(&db);
    let before = wait_for_writes_past(&db, 0);
    let dump = format!("dump@{db}");
    // Containers are paused for their volumes by default here: the dump is what spares this one.
    let config = env.config("[quiesce]\ndefault = \"pause\"\n");

    // The plan: the dump is a source of its own, and the container is not quiesced for its volume.
    let o = env.run(&[
        "plan",
        "--no-size",
        "--config",
        &config,
        "--only",
        &dump,
        "--only",
        &vol,
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let row = |name: &str| {
        o.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {o:?}"))
            .to_string()
    };
    let dump_row = row(&dump);
    assert!(
        dump_row.contains(" dump ") && dump_row.contains("runs the dump"),
        "{dump_row}"
    );
    let vol_row = row(&vol);
    assert!(
        vol_row.contains("none (not quiesced: its dump")
            && vol_row.contains("voltar.dump=postgres"),
        "{vol_row}"
    );

    // The backup, with every state change of the container watched.
    let watch = Watch::start(&[&db]);
    // With TRACE logs: no log line may carry the container's password (row 16).
    let t = env.t();
    let o = env.run_env(
        &[
            "backup", "--json", "-t", &t, "--config", &config, "--only", &dump, "--only", &vol,
        ],
        &[("VOLTAR_LOG", "trace")],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let touched = watch.touched(&db);
    assert!(
        touched.is_empty(),
        "the database container was paused or stopped: {touched:?}"
    );
    assert_eq!(support::state(&db), "running");
    let after = wait_for_writes_past(&db, history_rows(&db));
    let report = json(&o);
    let d = source(&report, &dump);
    assert_eq!(d["status"], "ok", "{d}");
    assert_eq!(d["kind"], "dump");
    let v = source(&report, &vol);
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["containers"][0]["action"], "none", "{v}");
    assert_eq!(v["containers"][0]["downtime-ms"], 0, "{v}");

    // The manifest: kind, object, size, sha256 of the stored object, the preset and its exit status.
    let (id, m) = env.only_manifest();
    let rec = source(&m, &dump);
    assert_eq!(rec["kind"], "dump");
    let object = format!("{dump}.sql.zst");
    assert_eq!(rec["object"], object.as_str());
    let stored = std::fs::read(env.target.join(&id).join(&object)).unwrap();
    assert_eq!(rec["stored-bytes"], stored.len() as u64);
    {
        use sha2::Digest;
        assert_eq!(
            rec["sha256"],
            hex::encode(sha2::Sha256::digest(&stored)).as_str()
        );
    }
    assert_eq!(rec["dump"]["preset"], "postgres");
    assert_eq!(rec["dump"]["exit-code"], 0);
    assert!(rec["dump"]["command"]
        .as_str()
        .unwrap()
        .contains("pg_dumpall"));
    // The password is never recorded or logged (row 16).
    assert!(!o.all().contains("pg-canary-9f3e1c"));
    assert!(!serde_json::to_string(&m)
        .unwrap()
        .contains("pg-canary-9f3e1c"));

    // Verify checks it as a stream (not a tar).
    let o = env.run(&["verify", &id, "-t", &env.t()]);
    assert_eq!(o.code, 0, "{o:?}");

    // Restore into a fresh PostgreSQL: the balances add up, and the dump is an instant between the reads.
    let (fresh, _) = start_pg(&mut c, "pg-fresh", &[]);
    let o = env.run(&[
        "restore",
        &id,
        "-t",
        &env.t(),
        "--source",
        &dump,
        "--to-container",
        &fresh,
        "--dry-run",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout.contains("would stream the dump into") && o.stdout.contains("psql"),
        "{o:?}"
    );
    assert!(
        psql(&fresh, "SELECT to_regclass('acct') IS NULL") == "t",
        "the dry run restored something"
    );
    let o = env.run(&[
        "restore",
        &id,
        "-t",
        &env.t(),
        "--source",
        &dump,
        "--to-container",
        &fresh,
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout
            .contains(&format!("{dump} -> container {fresh}: ok")),
        "{o:?}"
    );
    assert_eq!(psql(&fresh, "SELECT count(*) FROM acct"), "100");
    assert_eq!(
        psql(&fresh, "SELECT sum(bal) FROM acct"),
        TOTAL.to_string(),
        "the balances of the restored dump do not add up"
    );
    // The history holds exactly the transfers the balances reflect: each account's balance is 1000 plus what
    // the history says it got, minus what it gave.
    assert_eq!(
        psql(
            &fresh,
            "SELECT count(*) FROM acct a WHERE a.bal <> 1000 \
             + coalesce((SELECT sum(x) FROM history WHERE b = a.id), 0) \
             - coalesce((SELECT sum(x) FROM history WHERE a = a.id), 0)"
        ),
        "0"
    );
    let dumped = history_rows(&fresh);
    assert!(
        before <= dumped && dumped < after,
        "the dump's history ({dumped} rows) is not an instant within the load ({before}..{after})"
    );
}

/// Issue 13: a dump command that fails (exit 1, after writing some output) fails its source with exit code 1;
/// nothing of it is stored (the upload was aborted, the manifest does not list it); the other source is ok.
#[test]
fn issue13_failing_dump_fails_its_source_only_and_stores_nothing_of_it() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("vol");
    std::fs::write(support::mountpoint(&vol).join("a.txt"), "kept").unwrap();
    let app = c.run(
        "bad-dump",
        &[
            "-l",
            "voltar.dump-command=head -c 3000000 /dev/zero; echo broken >&2; exit 1",
        ],
    );
    let dump = format!("dump@{app}");
    let o = env.backup(&[&dump, &vol]);
    assert_eq!(o.code, 1, "{o:?}");
    let report = json(&o);
    let d = source(&report, &dump);
    assert_eq!(d["status"], "failed", "{d}");
    let err = d["error"].as_str().unwrap();
    assert!(
        err.contains("exit code 1") && err.contains("broken") && err.contains("nothing was stored"),
        "{err}"
    );
    assert_eq!(source(&report, &vol)["status"], "ok");
    let (id, m) = env.only_manifest();
    assert!(
        m["sources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"] != dump.as_str()),
        "{m}"
    );
    assert!(m["failed"].to_string().contains(&dump), "{m}");
    assert_eq!(
        env.stored_files(),
        vec![format!("{id}/manifest.json"), format!("{id}/{vol}.tar.zst")],
        "something of the failed dump was left in the target"
    );
}

/// A dump that hangs is killed at its `voltar.dump-timeout` and fails its source; nothing is stored for it.
#[test]
fn dump_past_its_timeout_is_killed_and_stores_nothing() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let app = c.run(
        "slow-dump",
        &[
            "-l",
            "voltar.dump-command=echo started; sleep 600",
            "-l",
            "voltar.dump-timeout=2s",
        ],
    );
    let dump = format!("dump@{app}");
    let started = Instant::now();
    let o = env.backup(&[&dump]);
    assert!(started.elapsed() < Duration::from_secs(60), "{o:?}");
    assert_eq!(o.code, 1, "{o:?}");
    let err = source(&json(&o), &dump)["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("timed out after 2s"), "{err}");
    // The kill is a signal: give the process a moment to be gone (under load it can outlive the run's exit).
    let killed = Instant::now();
    while docker(&["top", &app]).contains("sleep 600") {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the dump is still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // No backup: nothing was stored anywhere.
    assert!(
        env.stored_files().iter().all(|f| !f.contains(&dump)),
        "{:?}",
        env.stored_files()
    );
}

/// A custom dump (`voltar.dump-command` as a JSON array, `voltar.dump-restore-command`) round-trips byte for byte:
/// stored as `<source>.dump.zst`, verified as a stream, restored with `--to-file` and with `--to-container`
/// through the restore command's stdin; a corrupted object is caught by verify and by restore before anything
/// is sent to the container.
#[test]
fn custom_dump_round_trips_through_file_and_container_and_corruption_is_caught() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    // 2 MB of varied text, generated the same way each time.
    let gen = "i=0; while [ $i -lt 40000 ]; do echo \"line $i of the dump $((i * 7919 % 10007))\"; i=$((i+1)); done";
    let app = c.run(
        "custom",
        &[
            "-l",
            &format!(
                "voltar.dump-command={}",
                serde_json::to_string(&["sh", "-c", gen]).unwrap()
            ),
            "-l",
            "voltar.dump-restore-command=cat > /restored",
        ],
    );
    let expected = Command::new("sh")
        .args(["-c", gen])
        .output()
        .unwrap()
        .stdout;
    let dump = format!("dump@{app}");
    let o = env.backup(&[&dump]);
    assert_eq!(o.code, 0, "{o:?}");
    let (id, m) = env.only_manifest();
    let rec = source(&m, &dump);
    assert_eq!(rec["object"], format!("{dump}.dump.zst").as_str());
    assert_eq!(rec["counts"]["bytes"], expected.len() as u64);
    assert_eq!(rec["dump"]["dump-bytes"], expected.len() as u64);
    assert_eq!(rec["dump"]["restore-command"], "cat > /restored");
    // Plain zstd: readable without voltar.
    let object = env.target.join(&id).join(format!("{dump}.dump.zst"));
    let out = Command::new("zstd")
        .arg("-dc")
        .arg(&object)
        .output()
        .unwrap();
    assert_eq!(out.stdout, expected);

    let o = env.run(&["verify", &id, "-t", &env.t()]);
    assert_eq!(o.code, 0, "{o:?}");
    let o = env.run(&["show", &id, "-t", &env.t()]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout.contains(&format!(
            "dump: {dump}: voltar.dump-command in container {app}, exit 0"
        )),
        "{o:?}"
    );

    // --to-file: the dump, decompressed, owner-only; an existing file needs --force.
    let file = env.tmp.path().join("out.dump");
    let f = file.to_string_lossy().into_owned();
    let t = env.t();
    let restore_to_file = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            id.as_str(),
            "-t",
            t.as_str(),
            "--source",
            dump.as_str(),
            "--to-file",
            f.as_str(),
        ];
        args.extend_from_slice(extra);
        env.run(&args)
    };
    let o = restore_to_file(&[]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(std::fs::read(&file).unwrap(), expected);
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let o = restore_to_file(&[]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("--force"), "{o:?}");

    // --to-container: through the restore command's stdin.
    let target = c.run("custom-into", &[]);
    let o = env.run(&[
        "restore",
        &id,
        "-t",
        &env.t(),
        "--source",
        &dump,
        "--to-container",
        &target,
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let got = support::docker_raw(&["exec", &target, "cat", "/restored"]).stdout;
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the restored dump differs");

    // Corrupt one byte in the middle of the stored object.
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&object, &bytes).unwrap();
    let o = env.run(&["verify", &id, "-t", &env.t()]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.all().contains("sha256"), "{o:?}");
    assert!(
        !o.all().contains("tar"),
        "verify read the dump as a tar: {o:?}"
    );
    let fresh = c.run("custom-fresh", &[]);
    let o = env.run(&[
        "restore",
        &id,
        "-t",
        &env.t(),
        "--source",
        &dump,
        "--to-container",
        &fresh,
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.all().contains("nothing was sent to container"), "{o:?}");
    assert!(
        !support::docker_raw(&["exec", &fresh, "test", "-e", "/restored"])
            .status
            .success(),
        "the restore command ran with a corrupt dump"
    );
    // --to-file leaves no file (nor temporary) behind.
    std::fs::remove_file(&file).unwrap();
    let o = restore_to_file(&[]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        std::fs::read_dir(env.tmp.path())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("out.dump")),
        "a file was left by the failed restore"
    );
}

/// A failing restore command fails the restore (exit 1) and says the database may hold part of the dump.
#[test]
fn failing_restore_command_fails_the_restore() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let app = c.run(
        "dump-src",
        &[
            "-l",
            "voltar.dump-command=seq 1 100000",
            "-l",
            "voltar.dump-restore-command=head -c 10 >/dev/null; echo refused >&2; exit 4",
        ],
    );
    let dump = format!("dump@{app}");
    let o = env.backup(&[&dump]);
    assert_eq!(o.code, 0, "{o:?}");
    let (id, _) = env.only_manifest();
    let into = c.run("dump-into", &[]);
    let o = env.run(&[
        "restore",
        &id,
        "-t",
        &env.t(),
        "--source",
        &dump,
        "--to-container",
        &into,
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("exit code 4") && o.all().contains("refused"),
        "{o:?}"
    );
}

/// `dump-only`: the container's volume is left out of the plan (the dump is its backup); a dump whose
/// container is not running is skipped with the reason, and its volume is archived as usual.
#[test]
fn dump_only_and_stopped_containers_in_the_plan() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let vol = c.volume("only-data");
    let mount = format!("{vol}:/data");
    let app = c.run(
        "only",
        &[
            "-v",
            &mount,
            "-l",
            "voltar.dump-command=cat /data/x",
            "-l",
            "voltar.dump-only=true",
        ],
    );
    let dump = format!("dump@{app}");
    let o = env.run(&[
        "plan",
        "--json",
        "--no-size",
        "--only",
        &dump,
        "--only",
        &vol,
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    // Naming the volume with --only brings it back (dump-only is a default, not a hard rule).
    let p = json(&o);
    assert!(p["sources"].to_string().contains(&vol), "{p}");
    let o = env.run(&["plan", "--json", "--no-size"]);
    let p = json(&o);
    let skipped = p["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == vol.as_str())
        .unwrap_or_else(|| panic!("{vol} not skipped: {p}"));
    assert!(
        skipped["reason"]
            .as_str()
            .unwrap()
            .contains("voltar.dump-only=true"),
        "{skipped}"
    );
    assert!(p["sources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == dump.as_str() && s["kind"] == "dump"));

    docker(&["stop", "-t", "0", &app]);
    let o = env.run(&["plan", "--json", "--no-size"]);
    let p = json(&o);
    let skipped = p["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == dump.as_str())
        .unwrap_or_else(|| panic!("{dump} not skipped: {p}"));
    assert!(
        skipped["reason"]
            .as_str()
            .unwrap()
            .contains("archived instead"),
        "{skipped}"
    );
    assert!(
        p["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == vol.as_str()),
        "{p}"
    );
}

// ------------------------------------------------------------------------------------------------------------
// MariaDB

const MARIADB_PW: &str = "md-canary-51c0de";

/// Run SQL in database `bank` of the MariaDB in `container` as root; the output (tab-separated, no headers).
fn mariadb(container: &str, sql: &str) -> String {
    docker(&[
        "exec",
        "-e",
        &format!("MYSQL_PWD={MARIADB_PW}"),
        container,
        "mariadb",
        "-uroot",
        "-N",
        "-B",
        "bank",
        "-e",
        sql,
    ])
}

/// Start a MariaDB container of the test image (cleaned up by `c`), wait until it takes connections, make the
/// `bank` database (empty).
fn start_mariadb(c: &mut Cleanup, tag: &str, extra: &[&str]) -> (String, String) {
    let name = unique(tag);
    let vol = unique(&format!("{tag}-data"));
    c.containers.push(name.clone());
    c.volumes.push(vol.clone());
    let mount = format!("{vol}:/var/lib/mysql");
    let pw = format!("MARIADB_ROOT_PASSWORD={MARIADB_PW}");
    let mut args = vec!["run", "-d", "--name", &name, "-v", &mount, "-e", &pw];
    args.extend_from_slice(extra);
    args.push(MARIADB_IMAGE);
    docker(&args);
    let start = Instant::now();
    let env = format!("MYSQL_PWD={MARIADB_PW}");
    loop {
        let ok = docker_raw(&[
            "exec", "-e", &env, &name, "mariadb", "-uroot", "-e", "SELECT 1",
        ])
        .status
        .success();
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "mariadb in {name} did not come up: {}",
            String::from_utf8_lossy(&docker_raw(&["logs", &name]).stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (name, vol)
}

fn mariadb_history(container: &str) -> u64 {
    mariadb(container, "SELECT count(*) FROM history")
        .parse()
        .unwrap()
}

/// Issue 13, the same for MariaDB (Debian's `mariadb-server-core` in an image built here): under write load,
/// dumped with `voltar.dump=mariadb` (`mariadb-dump --all-databases --single-transaction`, the root password from
/// the container's `MARIADB_ROOT_PASSWORD` through `MYSQL_PWD`), never paused or stopped, restored with
/// `--to-container` into a fresh MariaDB where the balances add up.
#[test]
fn issue13_mariadb_dump_under_write_load_is_consistent_and_never_quiesces() {
    if !image_available(MARIADB_IMAGE, "scripts/mariadb-image.sh") {
        return;
    }
    let env = Env::new();
    let mut c = Cleanup::default();
    let (db, vol) = start_mariadb(&mut c, "mdb", &["-l", "voltar.dump=mariadb"]);
    let pw_env = format!("MYSQL_PWD={MARIADB_PW}");
    docker(&[
        "exec",
        "-e",
        &pw_env,
        &db,
        "mariadb",
        "-uroot",
        "-e",
        "CREATE DATABASE bank; \
         CREATE TABLE bank.acct (id int PRIMARY KEY, bal bigint NOT NULL) ENGINE=InnoDB; \
         CREATE TABLE bank.history (n bigint AUTO_INCREMENT PRIMARY KEY, a int, b int, x int) ENGINE=InnoDB; \
         INSERT INTO bank.acct WITH RECURSIVE s (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 100) \
         SELECT n, 1000 FROM s;",
    ]);
    // Transfers: one transaction per transfer, one client after another.
    docker(&[
        "exec",
        "-d",
        "-e",
        &pw_env,
        &db,
        "sh",
        "-c",
        "while :; do a=$((RANDOM % 100 + 1)); b=$((RANDOM % 100 + 1)); x=$((RANDOM % 50 + 1)); \
         mariadb -uroot bank -e \"START TRANSACTION; UPDATE acct SET bal = bal - $x WHERE id = $a; \
         UPDATE acct SET bal = bal + $x WHERE id = $b; INSERT INTO history (a, b, x) VALUES ($a, $b, $x); \
         COMMIT;\"; done",
    ]);
    let wait_past = |n: u64| {
        let start = Instant::now();
        loop {
            let now = mariadb_history(&db);
            if now > n {
                return now;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no transfer in {db}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let before = wait_past(0);
    let dump = format!("dump@{db}");
    let config = env.config("[quiesce]\ndefault = \"pause\"\n");
    let watch = Watch::start(&[&db]);
    let t = env.t();
    let o = env.run_env(
        &[
            "backup", "--json", "-t", &t, "--config", &config, "--only", &dump, "--only", &vol,
        ],
        &[("VOLTAR_LOG", "trace")],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let touched = watch.touched(&db);
    assert!(
        touched.is_empty(),
        "the database container was paused or stopped: {touched:?}"
    );
    let after = wait_past(mariadb_history(&db));
    assert!(
        !o.all().contains(MARIADB_PW),
        "the password is in the output"
    );
    let report = json(&o);
    assert_eq!(source(&report, &dump)["status"], "ok");
    assert_eq!(source(&report, &vol)["containers"][0]["action"], "none");
    let (id, m) = env.only_manifest();
    assert_eq!(
        source(&m, &dump)["object"],
        format!("{dump}.sql.zst").as_str()
    );
    assert_eq!(source(&m, &dump)["dump"]["preset"], "mariadb");
    assert!(!serde_json::to_string(&m).unwrap().contains(MARIADB_PW));

    let (fresh, _) = start_mariadb(&mut c, "mdb-fresh", &[]);
    let o = env.run(&[
        "restore",
        &id,
        "-t",
        &t,
        "--source",
        &dump,
        "--to-container",
        &fresh,
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(mariadb(&fresh, "SELECT count(*) FROM acct"), "100");
    assert_eq!(
        mariadb(&fresh, "SELECT sum(bal) FROM acct"),
        TOTAL.to_string(),
        "the balances of the restored dump do not add up"
    );
    assert_eq!(
        mariadb(
            &fresh,
            "SELECT count(*) FROM acct a WHERE a.bal <> 1000 \
             + coalesce((SELECT sum(x) FROM history WHERE b = a.id), 0) \
             - coalesce((SELECT sum(x) FROM history WHERE history.a = a.id), 0)"
        ),
        "0"
    );
    let dumped = mariadb_history(&fresh);
    assert!(
        before <= dumped && dumped < after,
        "the dump's history ({dumped} rows) is not an instant within the load ({before}..{after})"
    );
}

/// Acceptance row 2 for dumps: a dump that fails after streaming several S3 parts leaves no object and no
/// multipart upload behind on the S3 target, nor anything on the local one; a good dump to both is stored on both.
#[test]
fn issue13_failing_dump_aborts_its_s3_upload() {
    require_docker!();
    let Some(ep) = support::s3_endpoint() else {
        return;
    };
    let w = crate::s3::World::new(&ep);
    let mut c = Cleanup::default();
    let bad = c.run(
        "s3-bad-dump",
        &[
            "-l",
            "voltar.dump-command=head -c 40000000 /dev/urandom; exit 3",
        ],
    );
    let good = c.run("s3-good-dump", &["-l", "voltar.dump-command=seq 1 200000"]);
    let local = w.path("local");
    let config = w.config(
        "voltar.toml",
        &format!(
            "{}\n[target.local]\ntype = \"local\"\npath = \"{}\"\n",
            w.s3_target_toml("offsite", "dumps", ""),
            local.display()
        ),
    );
    let (bad_dump, good_dump) = (format!("dump@{bad}"), format!("dump@{good}"));
    let o = crate::s3::run(
        w.cmd(),
        &[
            "backup",
            "--json",
            "--config",
            &config.to_string_lossy(),
            "-t",
            "offsite",
            "-t",
            "local",
            "--only",
            &bad_dump,
            "--only",
            &good_dump,
        ],
    );
    assert_eq!(o.code, 1, "{o:?}");
    let report = json(&o);
    let b = source(&report, &bad_dump);
    assert_eq!(b["status"], "failed", "{b}");
    assert!(b["error"].as_str().unwrap().contains("exit code 3"), "{b}");
    assert_eq!(source(&report, &good_dump)["status"], "ok");

    let s = w.store("dumps");
    let keys = w.block(crate::s3::keys(&s));
    assert!(
        keys.iter().all(|k| !k.contains(&bad_dump)),
        "the failed dump is on S3: {keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.ends_with(&format!("{good_dump}.dump.zst"))),
        "{keys:?}"
    );
    let uploads = w.block(s.stale_uploads(Duration::ZERO)).unwrap();
    assert!(uploads.is_empty(), "multipart uploads left: {uploads:?}");
    let on_disk: Vec<String> = walk(&local)
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(
        on_disk.iter().all(|p| !p.contains(&bad_dump)),
        "the failed dump is on the local target: {on_disk:?}"
    );
}

/// An encrypted dump: stored as `<source>.dump.zst.age`, not readable as zstd without the key; verified and
/// restored `--to-file` with the identity, byte for byte; without a key the restore refuses.
#[test]
fn encrypted_dump_round_trips_with_the_key() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let app = c.run("enc-dump", &["-l", "voltar.dump-command=seq 1 100000"]);
    let expected = Command::new("seq")
        .args(["1", "100000"])
        .output()
        .unwrap()
        .stdout;
    let (secret, public) = voltar::crypto::generate_identity();
    let identity = env.tmp.path().join("key.txt");
    std::fs::write(&identity, format!("{secret}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = env.config(&format!("[encryption]\nrecipients = [\"{public}\"]\n"));
    let dump = format!("dump@{app}");
    let t = env.t();
    let o = env.run(&[
        "backup", "--json", "-t", &t, "--config", &config, "--only", &dump,
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let (id, m) = env.only_manifest();
    let object = format!("{dump}.dump.zst.age");
    assert_eq!(source(&m, &dump)["object"], object.as_str());
    let stored = std::fs::read(env.target.join(&id).join(&object)).unwrap();
    assert!(
        stored.starts_with(b"age-encryption.org/"),
        "not an age file"
    );
    let key = identity.to_string_lossy().into_owned();
    let o = env.run(&["verify", &id, "-t", &t, "-i", &key]);
    assert_eq!(o.code, 0, "{o:?}");
    let file = env.tmp.path().join("plain.dump");
    let f = file.to_string_lossy().into_owned();
    let o = env.run(&["restore", &id, "-t", &t, "--source", &dump, "--to-file", &f]);
    assert_ne!(o.code, 0, "restored an encrypted dump without a key: {o:?}");
    assert!(!file.exists());
    let o = env.run(&[
        "restore",
        &id,
        "-t",
        &t,
        "--source",
        &dump,
        "--to-file",
        &f,
        "-i",
        &key,
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        std::fs::read(&file).unwrap() == expected,
        "the restored dump differs"
    );
}

/// A voltar killed with SIGKILL in the middle of a dump leaves the dump's command running in its container (the
/// run cannot stop it any more). The command is journaled like a hook's: `voltar recover` kills it, the journal
/// is then empty, and nothing of the dump was committed.
///
/// The process is followed by the exec id the run journaled (and its pid, as the engine reports it): another test's
/// run that backs up every labelled container at the same time may run this dump too, in an exec of its own.
#[test]
fn a_dump_left_running_by_a_killed_run_is_killed_by_recover() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let app = c.run(
        "hung-dump",
        &["-l", "voltar.dump-command=echo started; sleep 7777"],
    );
    let dump = format!("dump@{app}");
    let t = env.t();
    let mut child = Command::new(BIN)
        .args(["backup", "--json", "-t", &t, "--only", &dump])
        .current_dir(&env.cwd)
        .env("VOLTAR_STATE_DIR", &env.state)
        .env_remove("VOLTAR_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The journal names the exec before it starts; wait until the engine says it runs.
    let journal_dir = voltar::quiesce::journal_dir(&env.state);
    let started = Instant::now();
    let (exec_id, pid) = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "voltar ended before the dump ran"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the dump never started"
        );
        let journaled = journaled_dump_exec(&journal_dir);
        if let Some(id) = journaled {
            let (running, pid) = exec_state(&id);
            if running && pid > 0 && top_pids(&app).contains(&pid) {
                break (id, pid);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        exec_state(&exec_id).0 && top_pids(&app).contains(&pid),
        "the dump outlives the killed run"
    );

    let o = env.run(&["recover"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains(&app), "recover names the dump:\n{o:?}");
    let killed = Instant::now();
    while exec_state(&exec_id).0 || top_pids(&app).contains(&pid) {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the dump (exec {exec_id}, pid {pid}) is still running after recover:\n{o:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let journal: Vec<_> = std::fs::read_dir(&journal_dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(journal.is_empty(), "{journal:?}");
    assert!(
        env.stored_files()
            .iter()
            .all(|f| !f.ends_with("manifest.json")),
        "{:?}",
        env.stored_files()
    );
}

/// The exec id of the dump journaled in `dir`, if any.
fn journaled_dump_exec(dir: &Path) -> Option<String> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_default();
            if v["leftover"]["kind"] == "dump-exec" {
                return v["leftover"]["exec-id"]
                    .as_str()
                    .or(v["leftover"]["exec_id"].as_str())
                    .map(String::from);
            }
        }
    }
    None
}

/// Whether the engine says exec `id` runs, and its pid (from `GET /exec/{id}/json` on the local socket).
fn exec_state(id: &str) -> (bool, i64) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect("/var/run/docker.sock").unwrap();
    write!(s, "GET /exec/{id}/json HTTP/1.0\r\nHost: docker\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(body).unwrap_or_default();
    (v["Running"] == true, v["Pid"].as_i64().unwrap_or(0))
}

/// The host pids of the processes in `container` (`docker top`).
fn top_pids(container: &str) -> Vec<i64> {
    docker(&["top", container, "-o", "pid"])
        .lines()
        .skip(1)
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Run SQL in database `db` of `container` as the superuser; the output (unaligned, tuples only).
fn psql_in(container: &str, db: &str, sql: &str) -> String {
    docker(&[
        "exec",
        container,
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-A",
        "-t",
        "-U",
        "postgres",
        "-d",
        db,
        "-c",
        sql,
    ])
}

/// psql goes on after an error and exits 0, so a PostgreSQL restore whose SQL failed used to say "ok" with the
/// errors as warnings. The expected noise of loading a `pg_dumpall` into a running cluster (its superuser role,
/// a database the image already made, empty) still restores; a real error (the tables exist: restoring into
/// the database the dump came from) fails the restore, exit 1, with psql's error.
#[test]
fn a_postgres_restore_whose_sql_fails_fails() {
    if !pg_available() {
        return;
    }
    let env = Env::new();
    let mut c = Cleanup::default();
    let (db, _) = start_pg(&mut c, "pgsrc", &["-l", "voltar.dump=postgres"]);
    psql(&db, "CREATE DATABASE app");
    psql_in(
        &db,
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one'), (2, 'two');",
    );
    let dump = format!("dump@{db}");
    let o = env.backup(&[&dump]);
    assert_eq!(o.code, 0, "{o:?}");
    let t = env.t();

    // A fresh cluster with the database made already (as POSTGRES_DB does) and empty: restores, exit 0.
    let (fresh, _) = start_pg(&mut c, "pgfresh", &[]);
    psql(&fresh, "CREATE DATABASE app");
    let o = env.run(&[
        "restore",
        "latest",
        "-t",
        &t,
        "--source",
        &dump,
        "--to-container",
        &fresh,
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        psql_in(&fresh, "app", "SELECT v FROM t ORDER BY id"),
        "one\ntwo"
    );

    // Into the cluster it came from: the table exists, its rows clash. The restore fails and says why.
    let o = env.run(&[
        "restore",
        "latest",
        "-t",
        &t,
        "--source",
        &dump,
        "--to-container",
        &db,
    ]);
    assert_eq!(o.code, 1, "{o:?}");
    let line = o
        .stdout
        .lines()
        .find(|l| l.contains(&format!("{dump} -> container {db}:")))
        .unwrap_or_else(|| panic!("no line for the dump: {o:?}"))
        .to_string();
    assert!(
        line.contains("failed") && line.contains("relation \"t\" already exists"),
        "{line}\n{o:?}"
    );
    assert!(
        !line.contains("role \"postgres\""),
        "the noise is not the error: {line}"
    );
}

/// A job takes the dumps that go with what it selects: a job limited to another volume runs no dump of a
/// labelled container (it used to dump every labelled container, whatever the job selected); a job that selects
/// the container's volume takes its dump too.
#[test]
fn a_job_limited_to_other_volumes_runs_no_dump() {
    require_docker!();
    let env = Env::new();
    let mut c = Cleanup::default();
    let data = c.volume("sel-data");
    let other = c.volume("sel-other");
    let mount = format!("{data}:/data");
    // The dump command leaves a mark in the container's volume each time it runs.
    let app = c.run(
        "sel",
        &[
            "-v",
            &mount,
            "-l",
            "voltar.dump-command=echo ran >> /data/dumped; echo dump",
        ],
    );
    let dump = format!("dump@{app}");
    let ran = || {
        std::fs::read_to_string(crate::support::mountpoint(&data).join("dumped"))
            .unwrap_or_default()
    };
    let sources = |o: &Out| -> Vec<String> {
        json(o)["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };

    let cfg = env.config(&format!("[selection]\ninclude = [\"{other}\"]\n"));
    let t = env.t();
    let o = env.run(&["backup", "--json", "-t", &t, "--config", &cfg]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(sources(&o), vec![other.clone()], "{o:?}");
    assert_eq!(ran(), "", "the dump ran in a job that does not select it");

    let cfg = env.config(&format!("[selection]\ninclude = [\"{data}\"]\n"));
    let o = env.run(&["backup", "--json", "-t", &t, "--config", &cfg]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(sources(&o), vec![dump.clone(), data.clone()], "{o:?}");
    assert_eq!(ran(), "ran\n");
}
