//! Safe unpack (acceptance rows 3, 4, 11, 12, 13, 15): hostile archives crafted byte by byte, corruption and
//! truncation of zstd streams, the zstd window cap, header size sanity, and a fidelity round trip against
//! archives written by GNU tar. No Docker needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng};
use voltar::archive::compress::{decoder, zstd_encoder, Format};
use voltar::archive::unpack::{scan, unpack, UnpackOptions, UnpackReport};
use voltar::archive::{ArchiveError, Counts};
use voltar::readback::{self, Entries, WalkError, Walked};

use crate::support::set_mtime;

// ---------------------------------------------------------------------------------------------------------------
// Crafting archives

/// One raw entry: the name and link fields are written as raw bytes, so `..`, absolute paths and anything else
/// survive exactly (the tar crate's `set_path` would refuse or normalise them).
struct Raw<'a> {
    name: &'a [u8],
    ty: tar::EntryType,
    link: &'a [u8],
    data: &'a [u8],
    mode: u32,
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        ty: tar::EntryType::Regular,
        link: b"",
        data,
        mode: 0o644,
    }
}
fn dir(name: &str) -> Raw<'_> {
    Raw {
        name: name.as_bytes(),
        ty: tar::EntryType::Directory,
        link: b"",
        data: b"",
        mode: 0o777,
    }
}
fn symlink<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        ty: tar::EntryType::Symlink,
        link: target.as_bytes(),
        data: b"",
        mode: 0o777,
    }
}
fn hardlink<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        ty: tar::EntryType::Link,
        link: target.as_bytes(),
        data: b"",
        mode: 0o644,
    }
}

fn raw_header(e: &Raw) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    assert!(e.name.len() <= 100 && e.link.len() <= 100);
    let old = h.as_old_mut();
    old.name[..e.name.len()].copy_from_slice(e.name);
    old.linkname[..e.link.len()].copy_from_slice(e.link);
    h.set_entry_type(e.ty);
    h.set_size(e.data.len() as u64);
    h.set_mode(e.mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    h
}

fn build(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        b.append(&raw_header(e), e.data).unwrap();
    }
    b.into_inner().unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// The restore dry run's listing: what unpack would write

/// What unpack writes, as relative names (the destination root left out).
fn unpacked(tar: &[u8], opts: UnpackOptions) -> Result<BTreeSet<PathBuf>, ArchiveError> {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().to_path_buf();
    match readback::walk(
        tar,
        Entries::Unpack {
            dest: dest.clone(),
            opts,
        },
    ) {
        Ok(_) => {}
        Err(WalkError::Entries(e)) => return Err(e),
        Err(e) => panic!("{e:?}"),
    }
    Ok(walkdir::WalkDir::new(&dest)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(&dest).unwrap().to_path_buf())
        .collect())
}

fn listed(tar: &[u8], opts: UnpackOptions) -> Result<BTreeSet<PathBuf>, ArchiveError> {
    match readback::walk(tar, Entries::List(opts)) {
        Ok(Walked::Listed(names)) => Ok(names.into_keys().collect()),
        Ok(w) => panic!("{w:?}"),
        Err(WalkError::Entries(e)) => Err(e),
        Err(e) => panic!("{e:?}"),
    }
}

fn selecting(strip: usize, paths: &[&str]) -> UnpackOptions {
    UnpackOptions {
        strip_components: strip,
        paths: paths.iter().map(PathBuf::from).collect(),
        same_owner: false,
        ..UnpackOptions::default()
    }
}

/// Issue 9: the dry-run listing walked names without unpack's rules, so a `..` member was listed (as if it
/// would be restored) while the restore itself refuses the archive.
#[test]
fn issue9_listing_refuses_what_unpack_refuses() {
    for members in [
        vec![dir("a/"), file("a/../../x", b"x")],
        vec![file("a", b"x"), hardlink("l", "../a")],
    ] {
        let tar = build(&members);
        let u = unpacked(&tar, selecting(0, &[])).unwrap_err();
        let l = listed(&tar, selecting(0, &[])).unwrap_err();
        assert!(matches!(u, ArchiveError::Unsafe { .. }), "{u}");
        assert_eq!(l.to_string(), u.to_string());
    }
}

/// Issue 9: the listing is what unpack writes, with `--path` selection, `--strip`, `./` and `/` prefixes,
/// and hardlinks whose target lies outside the selection left out.
#[test]
fn issue9_listing_is_what_unpack_writes() {
    let tar = build(&[
        dir("./top/"),
        dir("./top/conf/"),
        file("./top/conf/a", b"x"),
        file("/top/conf/b", b"x"),
        dir("top//data/"),
        file("top/data/c", b"x"),
        symlink("top/./data/s", "../conf/a"),
        hardlink("top/conf/h", "top/data/c"),
        hardlink("top/conf/h2", "./top/conf/a"),
        file("top/f", b"x"),
    ]);
    for (strip, paths) in [
        (0, vec![]),
        (0, vec!["top/conf"]),
        (0, vec!["top/data", "top/f"]),
        (1, vec![]),
        (1, vec!["conf"]),
        (2, vec![]),
        (3, vec![]),
    ] {
        let o = || selecting(strip, &paths);
        assert_eq!(
            listed(&tar, o()).unwrap(),
            unpacked(&tar, o()).unwrap(),
            "strip {strip}, paths {paths:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Observing the filesystem

/// A full listing of everything under `root` except the subtree `skip`: path, type, mode, owner, size, nlink,
/// mtime (ns), and the content (files) or target (symlinks). Two equal listings mean nothing changed.
fn listing(root: &Path, skip: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.unwrap();
        if e.path().starts_with(skip) {
            continue;
        }
        let m = fs::symlink_metadata(e.path()).unwrap();
        let what = if m.file_type().is_symlink() {
            format!("-> {:?}", fs::read_link(e.path()).unwrap())
        } else if m.is_file() {
            format!("sha256={}", sha2_hex(e.path()))
        } else {
            String::new()
        };
        out.push(format!(
            "{:?} mode={:o} {}:{} size={} nlink={} mtime={}.{} {what}",
            e.path().strip_prefix(root).unwrap(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.len(),
            m.nlink(),
            m.mtime(),
            m.mtime_nsec()
        ));
    }
    out
}

/// `t/dest` (empty) beside `t/canary` (a file, a directory, a mode to be changed by a successful attack).
struct Scene {
    t: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("dest")).unwrap();
        let c = t.path().join("canary");
        fs::create_dir_all(c.join("d")).unwrap();
        fs::write(c.join("secret"), b"do not touch").unwrap();
        fs::set_permissions(&c, fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(c.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        Scene { t }
    }
    fn dest(&self) -> PathBuf {
        self.t.path().join("dest")
    }
    fn canary(&self) -> PathBuf {
        self.t.path().join("canary")
    }
    fn outside(&self) -> Vec<String> {
        listing(self.t.path(), &self.dest())
    }
    fn unpack(&self, archive: &[u8]) -> Result<UnpackReport, ArchiveError> {
        unpack(archive, &self.dest(), &UnpackOptions::default())
    }
}

/// The archive must be refused with an error naming `entry`, and nothing outside dest may change.
fn assert_refused(entries: &[Raw], entry: &str) {
    let s = Scene::new();
    let before = s.outside();
    let passwd_links = fs::metadata("/etc/passwd").map(|m| m.nlink()).ok();
    let res = s.unpack(&build(entries));
    let err = match res {
        Ok(r) => panic!("archive with `{entry}` was accepted: {r:?}"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains(&format!("`{entry}`")),
        "error does not name `{entry}`: {err}"
    );
    assert_eq!(
        s.outside(),
        before,
        "something outside dest changed ({entry})"
    );
    assert_eq!(
        fs::metadata("/etc/passwd").map(|m| m.nlink()).ok(),
        passwd_links
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Row 12: never write outside the target

#[test]
fn dotdot_entries_are_errors_not_silently_skipped() {
    assert_refused(&[file("../canary/escape", b"x")], "../canary/escape");
    assert_refused(
        &[file("ok", b"1"), file("a/../../canary/escape", b"x")],
        "a/../../canary/escape",
    );
    assert_refused(&[dir("../canary/d")], "../canary/d");
    assert_refused(&[file("./..", b"x")], "./..");
}

#[test]
fn absolute_names_land_inside_dest_with_a_warning() {
    let s = Scene::new();
    let before = s.outside();
    let report = s
        .unpack(&build(&[file("/etc/x", b"inside"), file("/tmp/y", b"y")]))
        .unwrap();
    assert_eq!(fs::read(s.dest().join("etc/x")).unwrap(), b"inside");
    assert_eq!(fs::read(s.dest().join("tmp/y")).unwrap(), b"y");
    let slash_warnings = report
        .warnings
        .iter()
        .filter(|w| w.contains("leading `/`"))
        .count();
    assert_eq!(slash_warnings, 1, "{:?}", report.warnings);
    assert_eq!(s.outside(), before);
}

#[test]
fn writing_through_an_archive_symlink_is_refused() {
    assert_refused(
        &[symlink("link", "../canary"), file("link/pwned", b"x")],
        "link/pwned",
    );
    assert_refused(&[symlink("link", "../canary"), dir("link/sub")], "link/sub");
    assert_refused(
        &[
            dir("a"),
            symlink("a/l", "../../canary"),
            file("a/l/d/pwned", b"x"),
        ],
        "a/l/d/pwned",
    );
    // absolute symlink target: same thing
    let s = Scene::new();
    let target = s.canary().to_string_lossy().into_owned();
    let before = s.outside();
    let err = s
        .unpack(&build(&[symlink("abs", &target), file("abs/pwned", b"x")]))
        .unwrap_err();
    assert!(err.to_string().contains("`abs/pwned`"), "{err}");
    assert_eq!(s.outside(), before);
}

#[test]
fn writing_through_a_symlink_already_in_dest_is_refused() {
    let s = Scene::new();
    std::os::unix::fs::symlink("../canary", s.dest().join("pre")).unwrap();
    let before = s.outside();
    let err = s.unpack(&build(&[file("pre/pwned", b"x")])).unwrap_err();
    assert!(err.to_string().contains("`pre/pwned`"), "{err}");
    assert_eq!(s.outside(), before);
}

/// RUSTSEC-2026-0067: a symlink followed by a directory entry of the same name made tar-rs chmod the symlink's
/// target directory outside the extraction root.
#[test]
fn rustsec_2026_0067_symlink_then_directory_is_refused() {
    assert_refused(&[symlink("foo", "../canary"), dir("foo")], "foo");
    assert_refused(&[symlink("foo", "../canary"), dir("foo/.")], "foo/.");
    assert_refused(&[symlink("foo", "../canary/d"), dir("foo/")], "foo/");
}

/// RUSTSEC-2026-0068: tar-rs ignored a PAX `size` when the ustar size was non-zero, so an entry hidden in the
/// "data" of another was seen by some parsers and not others. The PAX size must win (as in GNU tar), and the
/// smuggled entry is then checked like any other.
#[test]
fn rustsec_2026_0068_pax_size_wins_and_smuggled_entry_is_checked() {
    let smuggled = raw_header(&file("../canary/smuggled", b""));
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("size", &b"0"[..])]).unwrap();
    let mut cover = raw_header(&file("innocent", &[]));
    cover.set_size(512);
    cover.set_cksum();
    b.append(&cover, &smuggled.as_bytes()[..]).unwrap();
    let bytes = b.into_inner().unwrap();

    // GNU tar agrees that the archive holds the smuggled name (no parser differential).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.tar");
    fs::write(&p, &bytes).unwrap();
    let listed = Command::new("tar").arg("-tf").arg(&p).output().unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("../canary/smuggled"),
        "{listed:?}"
    );

    let s = Scene::new();
    let before = s.outside();
    let err = s.unpack(&bytes).unwrap_err();
    assert!(err.to_string().contains("`../canary/smuggled`"), "{err}");
    assert_eq!(s.outside(), before);
}

#[test]
fn hardlinks_cannot_reach_outside() {
    assert_refused(&[hardlink("h", "../../etc/passwd")], "h");
    assert_refused(&[hardlink("h", "../canary/secret")], "h");
    // An absolute target is stripped like a member name: it names dest/etc/passwd, which is not there.
    assert_refused(&[hardlink("h", "/etc/passwd")], "h");
    let s = Scene::new();
    let abs = s.canary().join("secret").to_string_lossy().into_owned();
    let before = s.outside();
    let err = s.unpack(&build(&[hardlink("h", &abs)])).unwrap_err();
    assert!(err.to_string().contains("`h`"), "{err}");
    assert_eq!(s.outside(), before);
    assert_eq!(fs::metadata(s.canary().join("secret")).unwrap().nlink(), 1);
}

#[test]
fn hardlink_through_a_symlink_is_refused() {
    assert_refused(&[symlink("s", "../canary"), hardlink("h", "s/secret")], "h");
    // and a hardlink placed below a symlinked directory
    assert_refused(
        &[
            file("f", b"data"),
            symlink("s", "../canary"),
            hardlink("s/h", "f"),
        ],
        "s/h",
    );
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink_not_its_target() {
    let s = Scene::new();
    let before = s.outside();
    s.unpack(&build(&[
        symlink("s", "../canary/secret"),
        hardlink("h", "s"),
        file("h", b"overwritten"),
    ]))
    .unwrap();
    // `h` was a second name of the symlink; the later file entry replaced it instead of writing through it.
    assert_eq!(fs::read(s.dest().join("h")).unwrap(), b"overwritten");
    assert_eq!(
        fs::read_link(s.dest().join("s")).unwrap(),
        Path::new("../canary/secret")
    );
    assert_eq!(s.outside(), before);
}

#[test]
fn symlinks_pointing_outside_are_content_and_never_followed() {
    let s = Scene::new();
    let before = s.outside();
    let report = s
        .unpack(&build(&[
            symlink("passwd", "/etc/passwd"),
            symlink("up", "../../.."),
            symlink("sec", "../canary/secret"),
            // a regular file entry at a symlink's name replaces the link; it does not write through it
            file("sec", b"replaced"),
        ]))
        .unwrap();
    assert_eq!(report.counts.symlinks, 3);
    let m = fs::symlink_metadata(s.dest().join("passwd")).unwrap();
    assert!(m.file_type().is_symlink());
    assert_eq!(
        fs::read_link(s.dest().join("passwd")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(s.dest().join("up")).unwrap(),
        Path::new("../../..")
    );
    assert!(fs::symlink_metadata(s.dest().join("sec"))
        .unwrap()
        .is_file());
    assert_eq!(fs::read(s.dest().join("sec")).unwrap(), b"replaced");
    assert_eq!(s.outside(), before);
}

// ---------------------------------------------------------------------------------------------------------------
// Rows 3, 4, 11: truncation and corruption are detected

/// A tar archive with a few files of varied content, some large enough to span zstd blocks.
fn sample_tar() -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..12u32 {
        let len = rng.gen_range(0..60_000usize);
        let data: Vec<u8> = (0..len)
            .map(|j| {
                if j % 3 == 0 {
                    rng.gen()
                } else {
                    (j % 17) as u8
                }
            })
            .collect();
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("dir{}/file{i}", i % 3)).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    let mut e = zstd_encoder(Vec::new(), 3, 1).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn decode_and_scan(bytes: &[u8]) -> Result<Counts, ArchiveError> {
    let (_, r) = decoder(bytes)?;
    scan(r)
}

fn decode_all(bytes: &[u8]) -> Option<Vec<u8>> {
    let (_, mut r) = decoder(bytes).ok()?;
    let mut v = Vec::new();
    r.read_to_end(&mut v).ok().map(|_| v)
}

#[test]
fn flipped_bytes_in_a_zstd_archive_are_detected() {
    let tar = sample_tar();
    let z = zstd(&tar);
    let good = decode_and_scan(&z).unwrap();
    assert_eq!(good.files, 12);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let (mut detected, mut harmless) = (0, 0);
    for _ in 0..200 {
        let mut bad = z.clone();
        let at = rng.gen_range(0..bad.len());
        bad[at] ^= rng.gen_range(1..=255u8);
        match decode_and_scan(&bad) {
            Err(_) => detected += 1,
            Ok(_) => {
                // zstd ignores a few header bits (the frame header's unused bit, a window descriptor larger than
                // needed): then the decoded archive is the original, byte for byte, and nothing is corrupt. Any
                // other undetected flip is a failure. (The manifest's sha256 catches these flips too.)
                assert!(at < 6, "flip at {at} of {} went undetected", z.len());
                assert_eq!(
                    decode_all(&bad).as_deref(),
                    Some(&tar[..]),
                    "undetected flip at {at} changed the data"
                );
                harmless += 1;
            }
        }
    }
    eprintln!("flips: {detected} detected, {harmless} in ignored header bits");
    assert!(detected >= 195, "{detected}");
}

#[test]
fn cut_zstd_archives_are_detected() {
    let z = zstd(&sample_tar());
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut cuts: Vec<usize> = (0..200).map(|_| rng.gen_range(0..z.len())).collect();
    cuts.extend([0, 1, 3, 4, 5, z.len() - 4, z.len() - 1]);
    for cut in cuts {
        let err = decode_and_scan(&z[..cut]).expect_err(&format!("cut at {cut} undetected"));
        assert!(
            matches!(err, ArchiveError::Corrupt(_)),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn corrupt_archive_unpack_fails_naming_the_entry() {
    let tar = sample_tar();
    // cut in the middle of some entry's data, uncompressed: the data read comes up short
    let cut = &tar[..tar.len() / 2 + 100];
    let dir = tempfile::tempdir().unwrap();
    let err = unpack(cut, dir.path(), &UnpackOptions::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("`dir"), "{err}");

    // checksum mismatch through the zstd layer
    let mut z = zstd(&tar);
    let n = z.len();
    z[n - 2] ^= 1;
    let (_, r) = decoder(&z[..]).unwrap();
    let err = unpack(r, dir.path(), &UnpackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

/// Row 3: a plain tar cut exactly at an entry boundary (before the end-of-archive marker) is not a clean end.
#[test]
fn plain_tar_cut_at_an_entry_boundary_is_truncated() {
    let tar = build(&[file("a", b"aaaa"), file("b", b"bbbb")]);
    // header a + 1 data block = 1024: cut right after entry `a`
    let err = scan(&tar[..1024]).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(scan(&tar[..0]).is_err());
    assert_eq!(scan(&tar[..]).unwrap().files, 2);
}

// ---------------------------------------------------------------------------------------------------------------
// Row 15: hostile archives cannot exhaust memory or disk

fn zstd_with_window_log(window_log: u32) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.window_log(window_log).unwrap();
    e.include_checksum(true).unwrap();
    // Two writes with a flush between, so the encoder does not learn the total size and shrink the window.
    let tar = sample_tar();
    let (a, b) = tar.split_at(tar.len() / 2);
    e.write_all(a).unwrap();
    e.flush().unwrap();
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn zstd_frames_declaring_huge_windows_are_refused() {
    for (wlog, accepted) in [(27, true), (28, false), (31, false)] {
        let z = zstd_with_window_log(wlog);
        // Frame header: magic (4), descriptor (1), window descriptor (1): exponent in the top 5 bits.
        assert_eq!(z[4] & 0x20, 0, "not single-segment");
        assert_eq!(
            u32::from(z[5] >> 3) + 10,
            wlog,
            "window log written as asked"
        );
        let (f, _) = decoder(&z[..]).unwrap();
        assert_eq!(f, Format::Zstd);
        let res = decode_and_scan(&z);
        if accepted {
            assert_eq!(res.unwrap().files, 12);
        } else {
            let err = res.unwrap_err();
            assert!(err.to_string().contains("window larger than 2^27"), "{err}");
        }
    }
}

#[test]
fn entries_over_the_size_limit_are_refused_before_writing() {
    // a header claiming 1 TiB of data (the stream holds none of it)
    let mut h = raw_header(&file("big", b""));
    h.set_size(1 << 40);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend([0u8; 1024]);
    let s = Scene::new();
    let opts = UnpackOptions {
        max_entry_size: 1 << 30,
        ..UnpackOptions::default()
    };
    let err = unpack(&bytes[..], &s.dest(), &opts).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Unsafe { ref entry, .. } if entry == "big"),
        "{err:?}"
    );
    assert!(
        fs::read_dir(s.dest()).unwrap().next().is_none(),
        "nothing is written"
    );

    // a PAX sparse 1.0 file claiming an absurd real size
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("GNU.sparse.major", &b"1"[..]),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", b"sparse"),
        ("GNU.sparse.realsize", b"4611686018427387904"),
    ])
    .unwrap();
    let mut map = b"1\n4611686018427387000\n4\n".to_vec();
    map.resize(512, 0);
    map.extend(b"data");
    let mut h = raw_header(&file("GNUSparseFile.0/sparse", &map));
    h.set_size(map.len() as u64);
    h.set_cksum();
    b.append(&h, &map[..]).unwrap();
    let bytes = b.into_inner().unwrap();
    let s = Scene::new();
    let err = s.unpack(&bytes).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Unsafe { ref entry, .. } if entry == "sparse"),
        "{err:?}"
    );
    assert!(fs::read_dir(s.dest()).unwrap().next().is_none());
}

// ---------------------------------------------------------------------------------------------------------------
// Row 13: fidelity against GNU tar

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build a tree with the variety GNU tar can archive. Needs root (chown, and `mknod` not used).
fn fidelity_tree(root: &Path) {
    use std::os::unix::fs::symlink as ln_s;
    let p = |s: &str| root.join(s);
    fs::create_dir_all(p("d/sub")).unwrap();
    fs::create_dir(p("empty")).unwrap();
    fs::create_dir(p("sgid")).unwrap();
    fs::create_dir(p("sticky")).unwrap();
    fs::write(p("d/f"), b"plain file\n").unwrap();
    fs::write(p("d/sub/g"), vec![b'g'; 100_000]).unwrap();
    fs::write(p("suid"), b"#!/bin/sh\n").unwrap();
    fs::write(p("owned"), b"owned by 1234:5678").unwrap();
    std::os::unix::fs::chown(p("owned"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(p("d/sub"), Some(42), Some(43)).unwrap();
    sh(Command::new("mkfifo").arg(p("fifo")));
    // sparse: 1 GiB hole, data in the middle and at the end
    let f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(p("sparse"))
        .unwrap();
    f.set_len(1 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(b"middle", 500_000_000).unwrap();
    f.write_at(b"end", (1 << 30) - 3).unwrap();
    drop(f);
    // a non-UTF-8 name and a long path
    let bad = root.join(std::ffi::OsStr::from_bytes(b"bad\xff\xfename"));
    fs::write(&bad, b"latin-1").unwrap();
    let long_dir = p(&format!("{}/{}", "l".repeat(90), "m".repeat(90)));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("n".repeat(150)), b"long").unwrap();
    // hardlinks and symlinks
    fs::hard_link(p("d/f"), p("hl")).unwrap();
    fs::hard_link(p("d/f"), p("d/sub/hl2")).unwrap();
    ln_s("d/f", p("rel")).unwrap();
    ln_s("/etc/passwd", p("abs")).unwrap();
    ln_s("../../nowhere", p("dangling")).unwrap();
    // xattrs
    xattr::set(p("d/f"), "user.note", b"on a file").unwrap();
    xattr::set(p("d"), "user.dirnote", b"on a dir").unwrap();
    xattr::set(p("d/sub/g"), "user.bin", &[0u8, 1, 2, 255]).unwrap();
    // modes (after content, so read-only things could be written)
    let mode = |s: &str, m: u32| fs::set_permissions(p(s), fs::Permissions::from_mode(m)).unwrap();
    mode("suid", 0o4755);
    mode("sgid", 0o2775);
    mode("sticky", 0o1777);
    mode("d/f", 0o640);
    mode("d/sub/g", 0o400);
    mode("fifo", 0o620);
    mode("d/sub", 0o500); // read-only directory with children
                          // mtimes with nanoseconds, children first
    let mut n = 0;
    for e in walkdir::WalkDir::new(root).contents_first(true) {
        let e = e.unwrap();
        n += 1;
        set_mtime(e.path(), 1_500_000_000 + n * 1000, 123_456_789 + n as u32);
    }
}

/// Metadata of every path under `root`, keyed by relative path, for comparison across trees. Hardlink groups are
/// compared as sets of names sharing an inode.
fn describe_tree(root: &Path) -> (BTreeMap<PathBuf, String>, Vec<Vec<PathBuf>>) {
    let mut map = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let m = fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        if !ft.is_symlink() {
            for k in xattr::list(e.path()).unwrap() {
                let v = xattr::get(e.path(), &k).unwrap().unwrap_or_default();
                xattrs.push((k.to_string_lossy().into_owned(), v));
            }
        }
        let content = if ft.is_symlink() {
            format!("link={:?}", fs::read_link(e.path()).unwrap())
        } else if ft.is_file() {
            inodes.entry(m.ino()).or_default().push(rel.clone());
            // sha256 of a 1 GiB file takes long in a debug build: big files are compared byte-wise by the caller
            if m.len() <= 1 << 20 {
                format!("sha256={}", sha2_hex(e.path()))
            } else {
                "big".to_string()
            }
        } else {
            String::new()
        };
        // The root's own mtime: GNU tar restores it only with `.` as a member; both do here.
        map.insert(
            rel,
            format!(
                "type={:o} mode={:o} owner={}:{} size={} nlink={} mtime={}.{:09} xattrs={xattrs:?} {content}",
                m.mode() & libc::S_IFMT,
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                if ft.is_dir() { 0 } else { m.len() },
                if ft.is_dir() { 0 } else { m.nlink() },
                m.mtime(),
                m.mtime_nsec()
            ),
        );
    }
    let groups = inodes.into_values().filter(|g| g.len() > 1).collect();
    (map, groups)
}

fn sha2_hex(p: &Path) -> String {
    use sha2::Digest;
    let mut f = fs::File::open(p).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Byte-wise comparison in 1 MiB chunks (memcmp; fast also in debug builds).
fn same_content(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

fn am_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn gnu_tar_archive_round_trips_with_full_metadata() {
    if !am_root() {
        assert!(
            !crate::support::in_ci(),
            "the fidelity test needs root (chown to 1234:5678)"
        );
        eprintln!("\n!!! SKIPPING fidelity test: needs root\n");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fidelity_tree(&src);
    let archive = t.path().join("a.tar.zst");
    sh(Command::new("tar")
        .args([
            "--zstd",
            "--xattrs",
            "--xattrs-include=*",
            "--sparse",
            "--numeric-owner",
            "-cpf",
        ])
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("."));
    // The archive must hold the sparse file sparsely (GNU PAX sparse 1.0), or the test does not test that path.
    assert!(fs::metadata(&archive).unwrap().len() < 10 << 20);

    let counts = decode_and_scan(&fs::read(&archive).unwrap()).unwrap();
    let dest = t.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let (fmt, r) = decoder(fs::File::open(&archive).unwrap()).unwrap();
    assert_eq!(fmt, Format::Zstd);
    let report = unpack(
        r,
        &dest,
        &UnpackOptions {
            same_owner: true,
            ..UnpackOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report.counts, counts, "unpack and scan count alike");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    // Counts by the shared rules, from the source tree: first name of an inode = file, others = hardlinks.
    let mut expect = Counts::default();
    let mut seen = std::collections::HashSet::new();
    for e in walkdir::WalkDir::new(&src) {
        let m = fs::symlink_metadata(e.unwrap().path()).unwrap();
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            expect.dirs += 1;
        } else if ft.is_symlink() {
            expect.symlinks += 1;
        } else if ft.is_fifo() {
            expect.other += 1;
        } else if seen.insert(m.ino()) {
            expect.files += 1;
            expect.bytes += m.len();
        } else {
            expect.hardlinks += 1;
        }
    }
    expect.entries = expect.files + expect.dirs + expect.symlinks + expect.hardlinks + expect.other;
    assert_eq!(counts, expect);

    let (want, want_links) = describe_tree(&src);
    let (got, got_links) = describe_tree(&dest);
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "{k:?}");
    }
    assert_eq!(
        got.len(),
        want.len(),
        "extra entries: {:?}",
        got.keys()
            .filter(|k| !want.contains_key(*k))
            .collect::<Vec<_>>()
    );
    assert_eq!(got_links, want_links);
    assert!(
        same_content(&src.join("sparse"), &dest.join("sparse")),
        "sparse file content differs"
    );
    // the 1 GiB sparse file is written sparsely
    let blocks = fs::metadata(dest.join("sparse")).unwrap().blocks();
    assert!(
        blocks * 512 < 1 << 20,
        "sparse file allocated {} bytes",
        blocks * 512
    );
}

#[test]
fn gzip_archive_from_gnu_tar_unpacks() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/b/c"), b"gzip content").unwrap();
    fs::write(src.join("top"), vec![1u8; 70_000]).unwrap();
    // GNU format keeps whole seconds only
    for e in walkdir::WalkDir::new(&src).contents_first(true) {
        set_mtime(e.unwrap().path(), 1_600_000_000, 0);
    }
    let archive = t.path().join("a.tgz");
    sh(Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let dest = t.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let (fmt, r) = decoder(fs::File::open(&archive).unwrap()).unwrap();
    assert_eq!(fmt, Format::Gzip);
    let report = unpack(r, &dest, &UnpackOptions::default()).unwrap();
    assert_eq!(report.counts.files, 2);
    assert_eq!(report.counts.dirs, 3);
    assert_eq!(
        listing(&dest, Path::new("/nonexistent")),
        listing(&src, Path::new("/nonexistent"))
    );
}

/// offen/docker-volume-backup writes `/backup/<volume>/...` entries (gzip); `strip_components = 2` must land exactly
/// the volume's contents.
#[test]
fn docker_volume_backup_layout_with_strip_components() {
    let mut b = tar::Builder::new(Vec::new());
    let entries: Vec<Raw> = vec![
        dir("/backup/"),
        dir("/backup/pgdata/"),
        dir("/backup/pgdata/base/"),
        file("/backup/pgdata/base/1", b"one"),
        file("/backup/pgdata/PG_VERSION", b"16\n"),
        symlink("/backup/pgdata/latest", "base/1"),
        hardlink("/backup/pgdata/PG_VERSION.bak", "/backup/pgdata/PG_VERSION"),
    ];
    for e in &entries {
        let mut h = raw_header(e);
        if e.ty == tar::EntryType::Directory {
            h.set_mode(0o700);
            h.set_cksum();
        }
        b.append(&h, e.data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    let bytes = gz.finish().unwrap();

    let s = Scene::new();
    let before = s.outside();
    let (fmt, r) = decoder(&bytes[..]).unwrap();
    assert_eq!(fmt, Format::Gzip);
    let report = unpack(
        r,
        &s.dest(),
        &UnpackOptions {
            strip_components: 2,
            ..UnpackOptions::default()
        },
    )
    .unwrap();
    assert_eq!(s.outside(), before);
    assert_eq!(
        report.skipped, 1,
        "only `/backup/` itself is stripped away entirely"
    );
    let mut names: Vec<String> = walkdir::WalkDir::new(s.dest())
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(s.dest())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["PG_VERSION", "PG_VERSION.bak", "base", "base/1", "latest"]
    );
    assert_eq!(fs::read(s.dest().join("PG_VERSION.bak")).unwrap(), b"16\n");
    assert_eq!(
        fs::metadata(s.dest().join("PG_VERSION")).unwrap().nlink(),
        2
    );
    assert_eq!(
        fs::read_link(s.dest().join("latest")).unwrap(),
        Path::new("base/1")
    );
    // `/backup/pgdata/` is the volume root: its mode applies to dest itself
    assert_eq!(fs::metadata(s.dest()).unwrap().mode() & 0o7777, 0o700);
}

#[test]
fn paths_filter_extracts_only_the_selection() {
    let bytes = build(&[
        dir("keep"),
        file("keep/a", b"a"),
        file("keep/sub/b", b"b"),
        file("other", b"o"),
        file("keepx", b"not a child of keep"),
        hardlink("keep/h", "other"),
    ]);
    let s = Scene::new();
    let opts = UnpackOptions {
        paths: vec![PathBuf::from("keep")],
        ..UnpackOptions::default()
    };
    let report = unpack(&bytes[..], &s.dest(), &opts).unwrap();
    assert_eq!(fs::read(s.dest().join("keep/a")).unwrap(), b"a");
    assert_eq!(fs::read(s.dest().join("keep/sub/b")).unwrap(), b"b");
    assert!(!s.dest().join("other").exists());
    assert!(!s.dest().join("keepx").exists());
    assert!(!s.dest().join("keep/h").exists());
    assert!(
        report.warnings.iter().any(|w| w.contains("keep/h")),
        "{:?}",
        report.warnings
    );
    assert_eq!(report.counts.entries, 6, "counts cover the whole archive");
    assert_eq!(report.skipped, 3);
}

#[test]
fn cancellation_stops_the_unpack() {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let s = Scene::new();
    let opts = UnpackOptions {
        cancel: Some(flag),
        ..UnpackOptions::default()
    };
    let err = unpack(&sample_tar()[..], &s.dest(), &opts).unwrap_err();
    assert!(matches!(err, ArchiveError::Cancelled), "{err:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// Row 15: metadata headers (PAX `x`/`g`, GNU long names `L`/`K`) are capped

/// A header of type `ty` named `name` declaring `size` bytes of data (none of which is included).
fn meta_header(ty: u8, name: &str, size: u64) -> Vec<u8> {
    let mut h = raw_header(&Raw {
        name: name.as_bytes(),
        ty: tar::EntryType::new(ty),
        link: b"",
        data: b"",
        mode: 0o644,
    });
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A zstd frame (written by hand, so building it costs nothing) holding `prefix` followed by `zeros` zero bytes
/// as RLE blocks: 4 bytes per 128 KiB, so 256 MiB of zeros take 8 KiB.
fn zstd_zero_bomb(prefix: &[u8], zeros: u64) -> Vec<u8> {
    assert!(zeros > 0 && prefix.len() < 128 * 1024);
    // magic; frame header descriptor: no content size, no checksum; window descriptor 2^17 = 128 KiB
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x38];
    let block = |last: bool, ty: u32, size: u64| {
        let v = u32::from(last) | (ty << 1) | ((size as u32) << 3);
        v.to_le_bytes()[..3].to_vec()
    };
    f.extend(block(false, 0, prefix.len() as u64));
    f.extend(prefix);
    let mut left = zeros;
    while left > 0 {
        let n = left.min(128 * 1024);
        left -= n;
        f.extend(block(left == 0, 1, n));
        f.push(0);
    }
    f
}

/// Peak resident set size of this process in bytes.
fn vm_hwm() -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// The peak RSS is per process, and other tests in this binary run in parallel: the measurement runs alone in a
/// fresh process (this test binary, running only the ignored test below).
#[test]
fn metadata_header_bombs_are_refused_without_allocating() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "archive_unpack::metadata_header_bomb_in_a_fresh_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
#[ignore = "run in a fresh process by metadata_header_bombs_are_refused_without_allocating"]
fn metadata_header_bomb_in_a_fresh_process() {
    // A header declaring 8 GiB of metadata, followed by 256 MiB of zeros (a zstd bomb of 8 KiB): without the cap
    // the tar crate would read all of it into one buffer.
    const ZEROS: u64 = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    let before = vm_hwm();
    for ty in [b'x', b'g', b'L', b'K'] {
        let mut prefix = meta_header(ty, "PaxHeaders/bomb", 8 << 30);
        // Two file entries a reader might reach if it skipped the header's (absent) data.
        prefix.extend(build(&[file("a", b"1")]));
        let bomb = zstd_zero_bomb(&prefix, ZEROS);
        assert!(bomb.len() < 16 * 1024);
        let t = std::time::Instant::now();
        let errs = [
            decode_and_scan(&bomb).unwrap_err(),
            unpack(
                decoder(&bomb[..]).unwrap().1,
                dir.path(),
                &UnpackOptions::default(),
            )
            .unwrap_err(),
        ];
        let grown = vm_hwm().saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "type {}: peak RSS grew by {} MiB reading a metadata bomb ({errs:?})",
            ty as char,
            grown >> 20
        );
        for err in errs {
            let msg = err.to_string();
            assert!(
                matches!(err, ArchiveError::Unsafe { ref entry, .. } if entry == "PaxHeaders/bomb"),
                "type {}: {err:?}",
                ty as char
            );
            assert!(
                msg.contains("8589934592") && msg.contains("1048576"),
                "the error shows the declared size and the limit: {msg}"
            );
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "type {}: refused only after {:?}",
            ty as char,
            t.elapsed()
        );
    }
    assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn metadata_headers_at_the_cap_are_read_and_one_byte_more_is_refused() {
    use voltar::archive::unpack::MAX_META_HEADER;
    let cap = MAX_META_HEADER;
    // PAX: one `comment` record of exactly `cap` bytes (the length counts its own digits).
    let digits = cap.to_string().len() as u64;
    let value = "c".repeat((cap - digits - 1 - "comment=".len() as u64 - 1) as usize);
    let record = format!("{cap} comment={value}\n");
    assert_eq!(record.len() as u64, cap);
    // GNU long name of exactly `cap` bytes (NUL-terminated, as GNU tar writes it).
    let mut long = "n".repeat(cap as usize - 1).into_bytes();
    long.push(0);
    for (ty, data) in [(b'x', record.as_bytes()), (b'L', &long[..])] {
        let mut ok = meta_header(ty, "././@LongLink", cap);
        ok.extend(data);
        ok.extend(build(&[file("f", b"data")]));
        let counts = scan(&ok[..]).unwrap_or_else(|e| panic!("type {}: {e}", ty as char));
        assert_eq!(counts.files, 1, "type {}", ty as char);
    }
    for ty in [b'x', b'g', b'L', b'K'] {
        let mut over = meta_header(ty, "././@LongLink", cap + 1);
        over.extend(vec![0u8; cap as usize + 1024]);
        over.extend(build(&[file("f", b"data")]));
        let err = scan(&over[..]).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Unsafe { ref entry, .. } if entry == "././@LongLink"),
            "type {}: {err:?}",
            ty as char
        );
        let s = Scene::new();
        let err = s.unpack(&over).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Unsafe { ref entry, .. } if entry == "././@LongLink"),
            "type {}: {err:?}",
            ty as char
        );
    }
}

#[test]
fn large_legitimate_metadata_headers_still_unpack() {
    // A ~3.8 KiB path (15 components of 250 bytes) as a GNU long name, and the same path plus xattrs and a
    // 512 KiB comment in one PAX header.
    let comps: Vec<String> = (0..15)
        .map(|i| format!("{i:02}{}", "d".repeat(248)))
        .collect();
    let deep = comps.join("/");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(5);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, format!("gnu/{deep}/f"), &b"gnu-1"[..])
        .unwrap();
    let xattrs: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            (
                format!("SCHILY.xattr.user.k{i:02}"),
                vec![b'a' + i as u8; 64],
            )
        })
        .collect();
    let path = format!("pax/{deep}/f");
    let comment = vec![b'c'; 512 * 1024];
    let mut records: Vec<(&str, &[u8])> = vec![("path", path.as_bytes()), ("comment", &comment)];
    records.extend(xattrs.iter().map(|(k, v)| (k.as_str(), &v[..])));
    b.append_pax_extensions(records).unwrap();
    let mut h = raw_header(&file("pax-placeholder", b"pax-1"));
    h.set_cksum();
    b.append(&h, &b"pax-1"[..]).unwrap();
    let bytes = b.into_inner().unwrap();
    assert!(bytes.len() > 512 * 1024);

    assert_eq!(scan(&bytes[..]).unwrap().files, 2);
    let s = Scene::new();
    s.unpack(&bytes).unwrap();
    let gnu = s.dest().join("gnu").join(&deep).join("f");
    let pax = s.dest().join("pax").join(&deep).join("f");
    // The paths exceed PATH_MAX for a single syscall only in the worst case; 3.8 KiB is below it.
    assert_eq!(fs::read(&gnu).unwrap(), b"gnu-1");
    assert_eq!(fs::read(&pax).unwrap(), b"pax-1");
    for (k, v) in &xattrs {
        let name = k.strip_prefix("SCHILY.xattr.").unwrap();
        assert_eq!(
            xattr::get(&pax, name).unwrap().as_deref(),
            Some(&v[..]),
            "{name}"
        );
    }
}
