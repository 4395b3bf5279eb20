//! Issue 14, "Check before the night, not during it": `voltar config check` through the real binary, against the
//! real engine and the real S3 server (VOLTAR_TEST_S3_ENDPOINT).

use serde_json::Value;

use crate::s3::World;
use crate::support::{self, Cleanup, Out};
use voltar::storage::Storage;

/// `voltar -c CONFIG config check ARGS…` in the world's clean environment.
fn check(w: &World, config: &std::path::Path, args: &[&str]) -> Out {
    w.cmd()
        .arg("-c")
        .arg(config)
        .args(["config", "check"])
        .args(args)
        .output()
        .expect("run voltar")
        .into()
}

/// The line of the check named `name` (`target local`, `job nightly`…).
#[track_caller]
fn line<'a>(out: &'a Out, name: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| {
            l.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .starts_with(&format!("{name} "))
        })
        .unwrap_or_else(|| panic!("no line for {name}: {out:?}"))
}

/// A job `nightly` backing up `volume` to a local target (at `local`) and the world's S3 bucket, on a schedule.
fn config_text(w: &World, local: &std::path::Path, volume: &str) -> String {
    format!(
        "{}\n[target.local]\ntype = \"local\"\npath = \"{}\"\n\n\
         [job.nightly]\ntargets = [\"local\", \"offsite\"]\nschedule = \"15 3 * * *\"\ntimezone = \"Europe/Berlin\"\n\
         [job.nightly.selection]\ninclude = [\"{volume}\"]\n",
        w.s3_target_toml("offsite", "host1", ""),
        local.display(),
    )
}

/// A good config: exit 0, every line ok, the job's line says what it would do, and nothing is left in the
/// targets (the check's probes are removed).
#[test]
fn issue14_a_good_config_passes_every_check() {
    crate::require_docker!();
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let w = World::new(&endpoint);
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("check-good");
    let local = w.path("local");
    let cfg = w.config("voltar.toml", &config_text(&w, &local, &vol));

    let out = check(&w, &cfg, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.len() >= 6, "{out:?}");
    for l in &lines[..lines.len() - 1] {
        assert!(l.starts_with("ok "), "not ok: {l}\n{out:?}");
    }
    assert_eq!(lines[lines.len() - 1], "all checks passed", "{out:?}");
    for name in [
        "config",
        "encryption",
        "engine",
        "target local",
        "target offsite",
    ] {
        line(&out, name);
    }
    let job = line(&out, "job nightly");
    assert!(
        job.contains("1 volume(s), 0 bind mount(s), targets local, offsite; schedule 15 3 * * * Europe/Berlin, next "),
        "{job}"
    );
    // Nothing left behind: the local directory is empty, the bucket holds no object.
    let left: Vec<_> = std::fs::read_dir(&local).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let store = w.store("");
    let keys = w.block(store.list("")).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// A local target whose `path` is a file: exit 1, the target's line names it and the fix.
#[test]
fn issue14_a_local_target_that_is_a_file_fails_naming_it() {
    crate::require_docker!();
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let w = World::new(&endpoint);
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("check-file");
    let local = w.path("a-file");
    std::fs::write(&local, "not a directory\n").unwrap();
    let cfg = w.config("voltar.toml", &config_text(&w, &local, &vol));

    let out = check(&w, &cfg, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let l = line(&out, "target local");
    assert!(l.starts_with("FAILED "), "{l}");
    assert!(l.contains("target local"), "{l}");
    assert!(
        l.contains("make `path` of [target.local] a directory"),
        "{l}"
    );
    assert!(line(&out, "target offsite").starts_with("ok "), "{out:?}");
    assert!(out.stdout.ends_with("1 check(s) FAILED\n"), "{out:?}");
    // Still a file, unchanged.
    assert_eq!(
        std::fs::read_to_string(&local).unwrap(),
        "not a directory\n"
    );
}

/// An S3 target whose bucket does not exist: exit 1, naming the bucket.
#[test]
fn issue14_a_missing_bucket_fails_naming_it() {
    crate::require_docker!();
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let w = World::without_bucket(&endpoint);
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("check-bucket");
    let local = w.path("local");
    let cfg = w.config("voltar.toml", &config_text(&w, &local, &vol));

    let out = check(&w, &cfg, &["--job", "nightly"]);
    assert_eq!(out.code, 1, "{out:?}");
    let l = line(&out, "target offsite");
    assert!(l.starts_with("FAILED "), "{l}");
    assert!(
        l.contains(&format!("bucket `{}` does not exist", w.bucket)),
        "{l}"
    );
    assert!(line(&out, "target local").starts_with("ok "), "{out:?}");
}

/// A job whose selection matches nothing: exit 1, saying so and how to fix it.
#[test]
fn issue14_a_job_that_selects_nothing_fails() {
    crate::require_docker!();
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let w = World::new(&endpoint);
    let local = w.path("local");
    let nothing = support::unique("check-no-such-volume");
    let cfg = w.config("voltar.toml", &config_text(&w, &local, &nothing));

    let out = check(&w, &cfg, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let l = line(&out, "job nightly");
    assert!(l.starts_with("FAILED "), "{l}");
    assert!(l.contains("matches no volume or bind mount"), "{l}");
    assert!(l.contains("include"), "{l}");
    for name in ["engine", "target local", "target offsite"] {
        assert!(line(&out, name).starts_with("ok "), "{out:?}");
    }
}

/// A config that does not parse: exit 2, naming the key (no check is run).
#[test]
fn issue14_an_unparsable_config_exits_2_naming_the_key() {
    let w = World::without_bucket("http://127.0.0.1:9");
    let cfg = w.config(
        "voltar.toml",
        "[target.local]\ntype = \"local\"\npath = \"/tmp\"\nchek-timeout = \"5s\"\n",
    );
    let out = check(&w, &cfg, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("chek-timeout"), "{out:?}");
    assert!(!out.stdout.contains("ok "), "{out:?}");
}

/// `--json`: one document, each check with its name, an `ok` flag and what was found; `ok` overall.
#[test]
fn issue14_json_is_one_document_with_each_check() {
    crate::require_docker!();
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let w = World::without_bucket(&endpoint);
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("check-json");
    let local = w.path("local");
    let cfg = w.config("voltar.toml", &config_text(&w, &local, &vol));

    let out = check(&w, &cfg, &["--json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out:?}"));
    assert_eq!(v["ok"], false, "{v:#}");
    let checks = v["checks"].as_array().unwrap();
    let by = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name}: {v:#}"))
    };
    for c in checks {
        assert!(c["ok"].is_boolean() && c["detail"].is_string(), "{c:#}");
    }
    assert_eq!(by("engine")["ok"], true, "{v:#}");
    assert_eq!(by("target local")["ok"], true, "{v:#}");
    assert_eq!(by("target offsite")["ok"], false, "{v:#}");
    assert!(
        by("target offsite")["detail"]
            .as_str()
            .unwrap()
            .contains(&w.bucket),
        "{v:#}"
    );
    assert_eq!(by("job nightly")["ok"], true, "{v:#}");
}

/// A target's secret file that group or others can read: exit 1, the file's line names it and the fix (the
/// loader's rule); the secret itself is never printed.
#[test]
fn issue14_a_group_readable_secret_file_fails_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    crate::require_docker!();
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let w = World::new(&endpoint);
    let mut cleanup = Cleanup::default();
    let vol = cleanup.volume("check-secret");
    let local = w.path("local");
    let secret = w.path("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = w.config("voltar.toml", &config_text(&w, &local, &vol));

    let out = check(&w, &cfg, &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let l = line(&out, &format!("secret {}", secret.display()));
    assert!(l.starts_with("FAILED "), "{l}");
    assert!(
        l.contains(&format!("chmod 600 {}", secret.display())),
        "{l}"
    );
    assert!(l.contains("target offsite"), "{l}");
    assert!(
        line(&out, &format!("secret {}", w.path("key-id").display())).starts_with("ok "),
        "{out:?}"
    );
    assert!(!out.all().contains(crate::s3::SECRET), "{out:?}");
}
