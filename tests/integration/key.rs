//! `voltar key`: a new user makes an age key with voltar alone, backs up encrypted with its public key, and
//! restores with the identity file (issue 10, "no way to make an age key").

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use assert_cmd::Command;

use crate::require_docker;
use crate::support::{mountpoint, Cleanup, Out};

fn voltar(state: &Path, config: Option<&Path>, args: &[&str]) -> Out {
    let mut c = Command::cargo_bin("voltar").unwrap();
    c.env("VOLTAR_STATE_DIR", state)
        .env_remove("VOLTAR_CONFIG")
        .env("NO_COLOR", "1");
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    c.args(args).output().unwrap().into()
}

#[test]
fn key_generate_writes_an_owner_only_identity_and_never_overwrites_one() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("backup.key");
    let f = file.to_str().unwrap();

    let made = voltar(&state, None, &["key", "generate", "--out", f]);
    assert_eq!(made.code, 0, "{made:?}");
    let public = made.stdout.trim().to_string();
    assert!(public.starts_with("age1"), "{made:?}");
    assert!(made.stderr.contains("recipients"), "{made:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!("# public key: {public}\n")),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .count(),
        1,
        "{text}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "identity file mode {mode:o}");

    // `key public` reads the same public key back from the file.
    let shown = voltar(&state, None, &["key", "public", f]);
    assert_eq!(
        (shown.code, shown.stdout.trim()),
        (0, public.as_str()),
        "{shown:?}"
    );

    // A second generate to the same path is refused and the first key is untouched.
    let again = voltar(&state, None, &["key", "generate", "--out", f]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains(f),
        "{again:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // Without --out the identity goes to stdout; --json gives both halves.
    let json = voltar(&state, None, &["--json", "key", "generate"]);
    assert_eq!(json.code, 0, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let (p, id) = (
        v["public_key"].as_str().unwrap(),
        v["identity"].as_str().unwrap(),
    );
    assert!(
        p.starts_with("age1") && id.contains(&format!("# public key: {p}\n")),
        "{v}"
    );
    assert!(id.contains("AGE-SECRET-KEY-1"), "{v}");
}

/// The whole setup from the README: generate, put the public key in the config, back up, restore with -i.
#[test]
fn a_generated_key_encrypts_a_backup_that_restores_with_its_identity() {
    require_docker!();
    let mut cleanup = Cleanup::default();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let target = dir.path().join("target");
    let file = dir.path().join("backup.key");
    let vol = cleanup.volume("key-rt");
    std::fs::write(
        mountpoint(&vol).join("secret.txt"),
        b"hello from the volume\n",
    )
    .unwrap();

    let made = voltar(
        &state,
        None,
        &["key", "generate", "-o", file.to_str().unwrap()],
    );
    assert_eq!(made.code, 0, "{made:?}");
    let config = dir.path().join("voltar.toml");
    std::fs::write(
        &config,
        format!("[encryption]\nrecipients = [\"{}\"]\n", made.stdout.trim()),
    )
    .unwrap();

    let t = target.to_str().unwrap();
    let b = voltar(&state, Some(&config), &["backup", "--only", &vol, "-t", t]);
    assert_eq!(b.code, 0, "{b:?}");
    // Encrypted at rest: the plain text is nowhere in the target.
    for e in walkdir(&target) {
        let bytes = std::fs::read(&e).unwrap();
        assert!(
            !bytes.windows(10).any(|w| w == b"hello from"),
            "{} holds plain text",
            e.display()
        );
    }

    let out = dir.path().join("restored");
    let to = out.to_str().unwrap();
    let without = voltar(
        &state,
        Some(&config),
        &["restore", "latest", "-t", t, "--to-dir", to],
    );
    assert_ne!(without.code, 0, "{without:?}");
    assert!(without.stderr.contains("--identity"), "{without:?}");

    let r = voltar(
        &state,
        Some(&config),
        &[
            "restore",
            "latest",
            "-t",
            t,
            "--to-dir",
            to,
            "-i",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let found = walkdir(&out)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "secret.txt"))
        .unwrap_or_else(|| panic!("secret.txt not restored under {to}: {r:?}"));
    assert_eq!(std::fs::read(found).unwrap(), b"hello from the volume\n");
}

fn walkdir(root: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_type().unwrap().is_file() {
                files.push(e.path());
            }
        }
    }
    files
}

/// On the backup host, which holds only public keys: `verify` without a key still checks every stored object's
/// size and sha256 (and the manifest's checksum, when it is read), says that the content needs the key, and
/// exits 0 when that much is sound; a damaged archive still fails it (exit 1). `restore` without the key fails
/// with the same hint.
#[test]
fn verify_without_the_key_checks_the_stored_bytes_and_says_what_it_could_not() {
    require_docker!();
    let mut cleanup = Cleanup::default();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let target = dir.path().join("target");
    let vol = cleanup.volume("key-verify");
    std::fs::write(
        mountpoint(&vol).join("data.txt"),
        "some data\n".repeat(1000),
    )
    .unwrap();
    let (_, public) = voltar::crypto::generate_identity();
    let config = dir.path().join("voltar.toml");
    std::fs::write(
        &config,
        format!("[encryption]\nrecipients = [\"{public}\"]\n"),
    )
    .unwrap();
    let t = target.to_str().unwrap();
    let b = voltar(&state, Some(&config), &["backup", "--only", &vol, "-t", t]);
    assert_eq!(b.code, 0, "{b:?}");

    let v = voltar(&state, Some(&config), &["verify", "-t", t]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout.contains(&vol), "{v:?}");
    assert!(
        v.stdout.contains("content not checked") && v.stdout.contains("--identity"),
        "{v:?}"
    );
    let j = voltar(&state, Some(&config), &["--json", "verify", "-t", t]);
    assert_eq!(j.code, 0, "{j:?}");
    let r: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(r["checks"][0]["ok"], true, "{r}");
    assert_eq!(r["checks"][0]["content-checked"], false, "{r}");

    // One flipped byte in the stored object: caught by its sha256, without the key.
    let obj = walkdir(&target)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".tar.zst.age"))
        .expect("an encrypted archive");
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&obj, &bytes).unwrap();
    let bad = voltar(&state, Some(&config), &["verify", "-t", t]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("sha256"), "{bad:?}");
}
