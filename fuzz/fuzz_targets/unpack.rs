//! Arbitrary bytes through `decoder()` + `unpack()` into a fresh temp dir: whatever the input, nothing outside the
//! destination may appear or change (a canary directory beside it is compared before and after), and nothing
//! may panic. Run with `cargo +nightly fuzz run unpack` from the repository root.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use voltar::archive::compress::decoder;
use voltar::archive::unpack::{unpack, UnpackOptions};

/// Everything under `root` except `skip`: path, type and mode, owner, size, nlink, mtime, content or link target.
fn listing(root: &Path, skip: &Path, out: &mut Vec<String>) {
    let mut names: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        if p == skip {
            continue;
        }
        let m = fs::symlink_metadata(&p).unwrap();
        let what = if m.file_type().is_symlink() {
            format!("{:?}", fs::read_link(&p).unwrap())
        } else if m.is_file() {
            format!("{:?}", fs::read(&p).unwrap())
        } else {
            String::new()
        };
        out.push(format!(
            "{p:?} {:o} {}:{} {} {} {}.{} {what}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.len(),
            m.nlink(),
            m.mtime(),
            m.mtime_nsec()
        ));
        if m.is_dir() {
            listing(&p, skip, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let canary = t.path().join("canary");
    fs::create_dir_all(canary.join("d")).unwrap();
    fs::write(canary.join("secret"), b"canary").unwrap();
    let mut before = Vec::new();
    listing(t.path(), &dest, &mut before);

    let opts = UnpackOptions {
        // keep the fuzzer's disk use small; the limit itself is part of what is exercised
        max_entry_size: 64 << 20,
        ..UnpackOptions::default()
    };
    if let Ok((_, reader)) = decoder(data) {
        let _ = unpack(reader, &dest, &opts);
    }

    let mut after = Vec::new();
    listing(t.path(), &dest, &mut after);
    assert_eq!(before, after, "something outside the destination changed");
    // make the temp dir removable whatever modes the archive set
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+rwx"])
        .arg(&dest)
        .status();
});
