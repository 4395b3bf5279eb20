//! The container image (`scripts/image.sh`, issue 14): FROM scratch with the static binary and CA certificates,
//! no shell, small; a one-shot backup in a hardened container (all capabilities dropped but DAC_READ_SEARCH,
//! read-only root filesystem, no-new-privileges, volumes mounted read-only, 128 MiB memory) archives a volume
//! with another user's private file, identical to the source; `docker-compose config` accepts deploy/compose.yaml.
//!
//! `scripts/test.sh` builds the image first; a test run without it (e.g. `--quick` before `scripts/image.sh`)
//! skips these loudly, and fails under CI.

use std::os::unix::fs::{chown, PermissionsExt};
use std::process::Command;

use crate::require_docker;
use crate::support::{docker, docker_raw, in_ci, mountpoint, Cleanup, Out};
use crate::tree::{diff, snapshot, DiffOptions};

/// `voltar:<major>.<minor>` when it was built, else `None` (after saying so; a failure under CI).
fn image() -> Option<String> {
    let version = env!("CARGO_PKG_VERSION");
    let minor = version.rsplit_once('.').map(|(m, _)| m).unwrap_or(version);
    let tag = format!("voltar:{minor}");
    if docker_raw(&["image", "inspect", &tag]).status.success() {
        return Some(tag);
    }
    let msg = format!("image {tag} not built (run scripts/image.sh)");
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("\n!!! SKIPPING: {msg}\n");
    None
}

#[test]
fn the_image_is_small_has_no_shell_and_runs_voltar() {
    require_docker!();
    let Some(img) = image() else { return };
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", &img])
        .parse()
        .unwrap();
    assert!(size <= 40 << 20, "{img} is {} MiB", size >> 20);
    let v = docker(&["run", "--rm", "--network", "none", &img, "--version"]);
    assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
    for shell in ["/bin/sh", "/bin/bash", "/bin/busybox"] {
        let o = docker_raw(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            shell,
            &img,
        ]);
        assert!(!o.status.success(), "{shell} exists in {img}");
    }
    let labels = docker(&["image", "inspect", "-f", "{{json .Config.Labels}}", &img]);
    assert!(
        labels.contains(&format!(
            "\"org.opencontainers.image.version\":\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{labels}"
    );
}

#[test]
fn a_hardened_one_shot_backup_reads_private_files_and_matches_the_source() {
    require_docker!();
    let Some(img) = image() else { return };
    let mut c = Cleanup::default();
    let vol = c.volume("image-src");
    let mp = mountpoint(&vol);
    std::fs::create_dir(mp.join("private")).unwrap();
    std::fs::write(mp.join("private/secret"), "uid 1234 only").unwrap();
    std::fs::write(mp.join("public.txt"), "anyone").unwrap();
    std::fs::set_permissions(
        mp.join("private/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(mp.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    chown(mp.join("private"), Some(1234), Some(1234)).unwrap();
    chown(mp.join("private/secret"), Some(1234), Some(1234)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let state = c.volume("image-state");

    let run = |extra: &[&str]| -> Out {
        let mut args: Vec<String> = [
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges:true",
            "--memory",
            "128m",
            "--memory-swap",
            "128m",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            "/var/lib/docker/volumes:/var/lib/docker/volumes:ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("-v".into());
        args.push(format!("{}:/backups", target.display()));
        args.push("-v".into());
        args.push(format!("{state}:/var/lib/voltar"));
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(img.clone());
        args.extend(["backup", "--only", &vol, "-t", "/backups"].map(String::from));
        Command::new("docker").args(&args).output().unwrap().into()
    };
    // Without DAC_READ_SEARCH the private directory cannot be read, and voltar says which capability to add.
    let denied = run(&[]);
    assert_eq!(denied.code, 1, "{denied:?}");
    assert!(
        denied.all().contains("--cap-add DAC_READ_SEARCH"),
        "{denied:?}"
    );
    // With it, the backup is complete.
    let ok = run(&["--cap-add", "DAC_READ_SEARCH"]);
    assert_eq!(ok.code, 0, "{ok:?}");

    // Restored on the host, the tree equals the source (owners, modes, contents).
    let out = tmp.path().join("out");
    let state_host = tmp.path().join("state-host");
    let r: Out = Command::new(env!("CARGO_BIN_EXE_voltar"))
        .args([
            "restore",
            "latest",
            "--source",
            &vol,
            "--to-dir",
            out.to_str().unwrap(),
        ])
        .args(["-t", target.to_str().unwrap()])
        .env("VOLTAR_STATE_DIR", &state_host)
        .env_remove("VOLTAR_CONFIG")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    let d = diff(
        &snapshot(&mp).unwrap(),
        &snapshot(&out).unwrap(),
        &DiffOptions {
            ignore_root_mtime: true,
            ..Default::default()
        },
    );
    assert!(d.is_empty(), "restored tree differs: {d:?}");
}

#[test]
fn compose_accepts_the_deployment_file() {
    let Ok(v) = Command::new("docker-compose").arg("version").output() else {
        let msg = "docker-compose is not installed (scripts/env.sh installs it)";
        if in_ci() {
            panic!("{msg}");
        }
        eprintln!("\n!!! SKIPPING: {msg}\n");
        return;
    };
    assert!(v.status.success());
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("deploy/compose.yaml"),
        dir.path().join("compose.yaml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    for f in ["secrets/s3-key-id", "secrets/s3-secret", "config.toml"] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    for profile in [None, Some("restore"), Some("proxy")] {
        let mut c = Command::new("docker-compose");
        c.current_dir(dir.path()).args(["-f", "compose.yaml"]);
        if let Some(p) = profile {
            c.args(["--profile", p]);
        }
        let o: Out = c.args(["config", "-q"]).output().unwrap().into();
        assert_eq!(o.code, 0, "profile {profile:?}: {o:?}");
    }
}

/// The daemon service of `deploy/compose.yaml`, run with the Compose tool (hardened as written: read-only root,
/// all capabilities dropped but DAC_READ_SEARCH, no-new-privileges), backs up on its schedule and becomes
/// healthy through the image's own `voltar healthcheck`. The test's override only adds a local target directory
/// and a quicker health interval.
#[test]
fn the_compose_daemon_backs_up_and_becomes_healthy() {
    require_docker!();
    let Some(_img) = image() else { return };
    if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_err()
    {
        let msg = "docker-compose is not installed (scripts/env.sh installs it)";
        assert!(!in_ci(), "{msg}");
        eprintln!("\n!!! SKIPPING: {msg}\n");
        return;
    }
    let mut c = Cleanup::default();
    let vol = c.volume("compose-src");
    std::fs::write(mountpoint(&vol).join("data.txt"), "compose").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("deploy/compose.yaml"),
        dir.path().join("compose.yaml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::create_dir(dir.path().join("bk")).unwrap();
    for f in ["secrets/s3-key-id", "secrets/s3-secret"] {
        std::fs::write(dir.path().join(f), "unused").unwrap();
        std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[selection]\ninclude = [\"{vol}\"]\n[target.local]\ntype = \"local\"\npath = \"/backups\"\n\
             [job.nightly]\ntargets = [\"local\"]\nschedule = \"*/2 * * * * *\"\ntimezone = \"UTC\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("override.yaml"),
        "services:\n  voltar:\n    volumes:\n      - ./bk:/backups\n    healthcheck:\n      interval: 2s\n      start_period: 0s\n",
    )
    .unwrap();
    let project = crate::support::unique("cz").replace(['-', '.'], "");
    let compose = |args: &[&str]| -> Out {
        Command::new("docker-compose")
            .current_dir(dir.path())
            .args(["-p", &project, "-f", "compose.yaml", "-f", "override.yaml"])
            .args(args)
            .output()
            .unwrap()
            .into()
    };
    struct Down<'a>(&'a dyn Fn(&[&str]) -> Out);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["down", "-v"]);
        }
    }
    let _down = Down(&compose);
    let up = compose(&["up", "-d", "voltar"]);
    assert_eq!(up.code, 0, "{up:?}");
    let container = format!("{project}_voltar_1");
    let inspect = |f: &str| docker(&["inspect", "-f", f, &container]);
    assert_eq!(inspect("{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_eq!(inspect("{{json .HostConfig.CapDrop}}"), "[\"ALL\"]");
    assert_eq!(
        inspect("{{json .HostConfig.CapAdd}}"),
        "[\"DAC_READ_SEARCH\"]"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let health = inspect("{{.State.Health.Status}}");
        if health == "healthy" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {health} after 90 s; logs:\n{}",
            docker(&["logs", &container])
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let backups = std::fs::read_dir(dir.path().join("bk")).unwrap().count();
    assert!(backups >= 1, "no backup in the target");
}
