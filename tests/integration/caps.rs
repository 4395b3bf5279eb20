//! A capability voltar lacks is named, not left to show as "permission denied" per file (issue 14): in a
//! hardened container (`cap_drop: [ALL]`) a backup without CAP_DAC_READ_SEARCH cannot read other users' private
//! files, and a restore without CHOWN/FOWNER/… cannot put owners and modes back.

use std::os::unix::fs::{chown, PermissionsExt};
use std::process::Command;

use crate::require_docker;
use crate::support::{mountpoint, Cleanup, Out};

/// `voltar ARGS` with the capabilities in `drop` taken out of the bounding set (and so from the process).
fn voltar_without(drop: &[&str], state: &std::path::Path, args: &[&str]) -> Out {
    let mut c = Command::new("setpriv");
    if !drop.is_empty() {
        let set: Vec<String> = drop.iter().map(|d| format!("-{d}")).collect();
        c.args(["--bounding-set", &set.join(","), "--inh-caps", "-all", "--"]);
    } else {
        c.arg("--");
    }
    c.arg(env!("CARGO_BIN_EXE_voltar"))
        .args(args)
        .env("VOLTAR_STATE_DIR", state)
        .env_remove("VOLTAR_CONFIG")
        .output()
        .expect("setpriv (util-linux) runs voltar")
        .into()
}

#[test]
fn a_missing_capability_is_named_with_its_fix() {
    require_docker!();
    let mut c = Cleanup::default();
    let vol = c.volume("caps");
    let mp = mountpoint(&vol);
    let private = mp.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::write(private.join("secret"), "only for uid 1234").unwrap();
    std::fs::set_permissions(
        private.join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    chown(&private, Some(1234), Some(1234)).unwrap();
    chown(private.join("secret"), Some(1234), Some(1234)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("target");
    std::fs::create_dir(&t).unwrap();
    let t = t.to_str().unwrap();
    let state = tmp.path().join("state");

    let b = voltar_without(
        &["dac_read_search", "dac_override"],
        &state,
        &["backup", "--only", &vol, "-t", t],
    );
    assert_eq!(b.code, 1, "the private directory is not archived: {b:?}");
    assert!(
        b.all().contains("CAP_DAC_READ_SEARCH") && b.all().contains("--cap-add DAC_READ_SEARCH"),
        "{b:?}"
    );

    // With it (as root has), the same backup is complete and says nothing of capabilities.
    let b = voltar_without(&[], &state, &["backup", "--only", &vol, "-t", t]);
    assert_eq!(b.code, 0, "{b:?}");
    assert!(!b.all().contains("CAP_"), "{b:?}");

    // A restore without CHOWN and FOWNER says so.
    let dir = tmp.path().join("out");
    let r = voltar_without(
        &["chown", "fowner"],
        &state,
        &[
            "restore",
            "latest",
            "--source",
            &vol,
            "--to-dir",
            dir.to_str().unwrap(),
            "-t",
            t,
        ],
    );
    assert!(
        r.all().contains("CAP_CHOWN") && r.all().contains("--cap-add FOWNER"),
        "{r:?}"
    );
}
