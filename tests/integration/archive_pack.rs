//! The packer against GNU tar: every file kind round-trips with its metadata (acceptance rows 13 and 14), the
//! counts agree with independent recounts, and a source that changes under the packer gives warnings and a
//! valid archive, never a failed run or a corrupt stream (row 5). Runs as root (chown, mknod, trusted.* xattrs).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, FileExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use crate::tree::{self, DiffOptions, Kind, Snapshot};
use rand::{RngCore, SeedableRng};
use voltar::archive::pack::{pack, PackOptions, PackReport};
use voltar::archive::unpack;
use voltar::archive::ArchiveError;
use voltar::catalog::Counts;

use crate::support::{chmod, mkfifo, set_mtime};

const MIB: u64 = 1 << 20;

/// Pack `root` through a zstd encoder (level 3, frame checksum) into `out`.
fn pack_zst(root: &Path, out: &Path) -> PackReport {
    let f = File::create(out).expect("create archive");
    let mut enc = zstd::stream::write::Encoder::new(f, 3).expect("zstd encoder");
    enc.include_checksum(true).expect("zstd checksum");
    let (rep, enc) = pack(root, enc, &PackOptions::default(), &mut |_| {}).expect("pack");
    enc.finish().expect("zstd finish").sync_all().expect("sync");
    rep
}

/// Extract with GNU tar, restoring owners, modes, xattrs (all namespaces); fail on any diagnostic.
fn gnu_extract(archive: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let out = Command::new("tar")
        .env("LC_ALL", "C")
        // no-timestamp: GNU tar remarks on dates before 1970 or far in the future (we archive both on purpose).
        .args([
            "--zstd",
            "-x",
            "-p",
            "--same-owner",
            "--numeric-owner",
            "--xattrs",
            "--warning=no-timestamp",
        ])
        .arg("--xattrs-include=*")
        .arg("-f")
        .arg(archive)
        .arg("-C")
        .arg(dest)
        .output()
        .expect("run GNU tar");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "GNU tar extract: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GNU tar's verbose listing; asserts a clean exit without any diagnostic.
fn gnu_list(archive: &Path) -> String {
    let out = Command::new("tar")
        .env("LC_ALL", "C")
        .args(["--zstd", "-tv", "--numeric-owner", "-f"])
        .arg(archive)
        .output()
        .expect("run GNU tar");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "GNU tar list: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Count entries the way `voltar verify` must (module docs of `archive::pack`), reading every byte with the
/// `tar` crate: a second, independent reader of our format.
fn recount_tar_crate(archive: &Path) -> Counts {
    let dec = zstd::stream::read::Decoder::new(File::open(archive).unwrap()).unwrap();
    let mut a = tar::Archive::new(dec);
    let mut c = Counts::default();
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry header");
        let realsize = e.pax_extensions().expect("pax").and_then(|x| {
            x.filter_map(Result::ok)
                .find(|r| r.key_bytes() == b"GNU.sparse.realsize")
                .map(|r| r.value().unwrap().parse::<u64>().unwrap())
        });
        let size = e.size();
        let t = e.header().entry_type();
        c.entries += 1;
        match t {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                c.files += 1;
                c.bytes += realsize.unwrap_or(size);
            }
            tar::EntryType::Directory => c.dirs += 1,
            tar::EntryType::Symlink => c.symlinks += 1,
            tar::EntryType::Link => c.hardlinks += 1,
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => c.other += 1,
            other => panic!("unexpected entry type {other:?}"),
        }
        let n = io::copy(&mut e, &mut io::sink()).expect("entry data");
        assert_eq!(n, size, "entry data length equals header size");
    }
    c
}

/// Count by GNU tar's `-tv` type letters (sizes not included: GNU shows hardlinks with size 0 anyway).
fn recount_gnu(listing: &str) -> Counts {
    let mut c = Counts::default();
    for line in listing.lines() {
        c.entries += 1;
        match line.as_bytes()[0] {
            b'-' => c.files += 1,
            b'd' => c.dirs += 1,
            b'l' => c.symlinks += 1,
            b'h' => c.hardlinks += 1,
            b'p' | b'c' | b'b' => c.other += 1,
            x => panic!("unexpected type letter {} in {line}", x as char),
        }
    }
    c
}

/// What the counts must be, derived from a snapshot of the source (sockets excluded).
fn expected_counts(src: &Snapshot) -> Counts {
    let mut c = Counts::default();
    for (p, n) in src {
        c.entries += 1;
        match n.kind {
            Kind::Dir => c.dirs += 1,
            Kind::Symlink => c.symlinks += 1,
            Kind::Fifo | Kind::Char | Kind::Block => c.other += 1,
            Kind::Socket => panic!("sockets are removed before counting"),
            // The first link in walk order is written as the file, the others as hardlinks. The group's
            // smallest path is that first one when all links share a directory (as built here).
            Kind::File => match &n.hardlink_group {
                Some(first) if first != p => c.hardlinks += 1,
                _ => {
                    c.files += 1;
                    c.bytes += n.size;
                }
            },
        }
    }
    c
}

fn mknod(p: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o620, libc::makedev(major, minor)) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
}

fn random_bytes(rng: &mut impl RngCore, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// A tree with every kind of entry and metadata the packer must keep. Returns the listening socket (which must
/// stay open while packing).
fn build_full_tree(root: &Path) -> UnixListener {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    fs::create_dir(root).unwrap();
    let p = |s: &str| root.join(s);

    // Regular files.
    fs::write(p("empty"), b"").unwrap();
    fs::write(p("small.txt"), b"hello\n").unwrap();
    fs::write(
        p("random.bin"),
        random_bytes(&mut rng, 5 * MIB as usize + 123),
    )
    .unwrap();
    fs::write(p("exactly-1MiB"), random_bytes(&mut rng, MIB as usize)).unwrap();

    // Modes and owners. chown clears suid/sgid, so chmod comes after it.
    fs::write(p("suid"), b"#!/bin/sh\n").unwrap();
    lchown(p("suid"), Some(1234), Some(5678)).unwrap();
    chmod(&p("suid"), 0o4755);
    fs::create_dir(p("sgid-dir")).unwrap();
    fs::write(p("sgid-dir/inside"), b"x").unwrap();
    lchown(p("sgid-dir"), Some(1234), Some(5678)).unwrap();
    chmod(&p("sgid-dir"), 0o2755);
    fs::create_dir(p("sticky")).unwrap();
    chmod(&p("sticky"), 0o1777);
    fs::write(p("sticky/f"), b"y").unwrap();
    fs::write(p("private"), b"secret").unwrap();
    chmod(&p("private"), 0o600);
    fs::write(p("nomode"), b"none").unwrap();
    chmod(&p("nomode"), 0o000);
    fs::write(p("big-ids"), b"ids beyond ustar's 7 octal digits").unwrap();
    lchown(p("big-ids"), Some(3_000_000), Some(4_000_000)).unwrap();

    // Directories: empty, nested empty, closed.
    fs::create_dir(p("empty-dir")).unwrap();
    fs::create_dir_all(p("nest/ed/empty")).unwrap();
    fs::create_dir(p("closed")).unwrap();
    fs::write(p("closed/f"), b"z").unwrap();
    chmod(&p("closed"), 0o000);

    // Symlinks: never followed, targets kept as they are.
    symlink("small.txt", p("link-rel")).unwrap();
    symlink("/etc/passwd", p("link-abs")).unwrap();
    symlink("does/not/exist", p("link-dangling")).unwrap();
    symlink("../../outside/of/the/tree", p("link-outside")).unwrap();
    symlink("sgid-dir", p("link-to-dir")).unwrap();
    let long_target = format!("{}/target", "t".repeat(150));
    symlink(&long_target, p("link-long")).unwrap();
    lchown(p("link-rel"), Some(1234), Some(5678)).unwrap();

    // Hardlinks: three names of one inode, in one directory so the first in walk order is the smallest.
    fs::create_dir(p("hl")).unwrap();
    fs::write(p("hl/a"), b"linked content").unwrap();
    fs::hard_link(p("hl/a"), p("hl/b")).unwrap();
    fs::hard_link(p("hl/a"), p("hl/c")).unwrap();

    // Special files.
    mkfifo(&p("fifo"));
    lchown(p("fifo"), Some(1234), Some(5678)).unwrap();
    mknod(&p("chr"), libc::S_IFCHR, 1, 3);
    mknod(&p("blk"), libc::S_IFBLK, 7, 200);

    // Sparse files: ends in a hole; ends in data; all hole.
    let f = File::create(p("sparse-big")).unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(&random_bytes(&mut rng, MIB as usize), 0)
        .unwrap();
    f.write_all_at(&random_bytes(&mut rng, MIB as usize + 7), 512 * MIB)
        .unwrap();
    drop(f);
    let f = File::create(p("sparse-tail")).unwrap();
    f.write_all_at(&random_bytes(&mut rng, 65536), 16 * MIB - 65536)
        .unwrap();
    drop(f);
    File::create(p("all-hole"))
        .unwrap()
        .set_len(100 * MIB)
        .unwrap();

    // Long and non-UTF-8 names.
    fs::write(p(&"n".repeat(150)), b"long name").unwrap();
    let mut deep = root.to_path_buf();
    for i in 0..6 {
        deep.push(format!("{i}-{}", "d".repeat(48)));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join(format!("leaf-{}", "f".repeat(90))), b"deep").unwrap();
    fs::write(
        root.join(OsStr::from_bytes(b"caf\xe9-\xff.bin")),
        b"latin1 name",
    )
    .unwrap();
    let mut long_bin = b"\xfe\xfd-".to_vec();
    long_bin.extend_from_slice(&[0xe9; 120]);
    fs::create_dir(root.join(OsStr::from_bytes(&long_bin))).unwrap();
    fs::write(
        root.join(OsStr::from_bytes(&long_bin))
            .join(OsStr::from_bytes(b"\x80")),
        b"q",
    )
    .unwrap();
    symlink(OsStr::from_bytes(b"caf\xe9-\xff.bin"), p("link-non-utf8")).unwrap();

    // Extended attributes: user.* on a file and a dir, a binary value, trusted.* (root only).
    xattr::set(p("small.txt"), "user.comment", b"a comment").unwrap();
    xattr::set(p("small.txt"), "user.binary", b"\0\x01\xff=\n").unwrap();
    xattr::set(p("sgid-dir"), "user.dir-attr", b"on a directory").unwrap();
    xattr::set(p("random.bin"), "trusted.voltar", b"trusted value").unwrap();
    xattr::set(p("sparse-big"), "user.on-sparse", b"1").unwrap();

    // A socket: skipped with a warning.
    let sock = UnixListener::bind(p("sock")).unwrap();

    // The root's own metadata travels as "./".
    lchown(root, Some(1234), Some(5678)).unwrap();
    chmod(root, 0o750);

    // Timestamps last (creating entries changes their directory's mtime), with nanoseconds everywhere, one
    // before 1970 and one past ustar's 11 octal digits.
    let all = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name();
    for (i, e) in all.into_iter().enumerate() {
        let i = i as u32;
        set_mtime(
            e.unwrap().path(),
            1_600_000_000 + i64::from(i) * 3607,
            (i * 7_919_993 + 1) % 1_000_000_000,
        );
    }
    set_mtime(&p("small.txt"), -1_000_000, 5);
    set_mtime(&p("private"), 9_000_000_000, 999_999_999);
    set_mtime(&p("empty"), 1_700_000_000, 0);
    sock
}

#[test]
fn every_kind_round_trips_through_gnu_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let _sock = build_full_tree(&src);
    let archive = tmp.path().join("a.tar.zst");

    let rep = pack_zst(&src, &archive);

    // The socket is the only thing left out, and it says so.
    assert!(
        rep.warnings.iter().any(|w| w.starts_with("sock: skipped")),
        "{:?}",
        rep.warnings
    );
    assert_eq!(
        rep.warnings.len(),
        1,
        "only the socket warns: {:?}",
        rep.warnings
    );

    let dst = tmp.path().join("dst");
    gnu_extract(&archive, &dst);

    let mut a = tree::snapshot(&src).unwrap();
    assert_eq!(
        a.remove(Path::new("sock")).map(|n| n.kind),
        Some(Kind::Socket)
    );
    let b = tree::snapshot(&dst).unwrap();
    let d = tree::diff(&a, &b, &DiffOptions::default());
    assert!(
        d.is_empty(),
        "differences after GNU tar extraction:\n{}",
        d.join("\n")
    );

    // The checks the diff makes are real ones: spot-check what it compared.
    let big = &b[Path::new("sparse-big")];
    assert_eq!(big.size, 1 << 30);
    assert!(
        big.blocks * 512 < 8 * MIB,
        "holes stayed holes: {} bytes allocated",
        big.blocks * 512
    );
    assert_eq!(b[Path::new("suid")].mode, 0o4755);
    assert_eq!(
        (b[Path::new(".")].uid, b[Path::new(".")].mode),
        (1234, 0o750)
    );
    assert_eq!(b[Path::new("big-ids")].uid, 3_000_000);
    assert_eq!(
        b[Path::new("small.txt")].mtime_ns,
        -1_000_000 * 1_000_000_000 + 5
    );
    assert_eq!(b[Path::new("chr")].kind, Kind::Char);
    assert_eq!(
        b[Path::new("hl/c")].hardlink_group.as_deref(),
        Some(Path::new("hl/a"))
    );
    assert!(b.contains_key(Path::new(OsStr::from_bytes(b"caf\xe9-\xff.bin"))));

    // Counts: from the source, from the tar crate reading every byte, and from GNU tar's listing.
    let expected = expected_counts(&a);
    assert_eq!(rep.counts, expected);
    assert_eq!(recount_tar_crate(&archive), expected);
    let mut gnu = recount_gnu(&gnu_list(&archive));
    gnu.bytes = expected.bytes;
    assert_eq!(gnu, expected);
}

/// Acceptance row 13: a sparse file over 8 GiB (beyond ustar's size field) keeps its size, data and holes.
#[test]
fn sparse_file_over_8_gib_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let size = 9 * (1 << 30) + 12_345;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let head = random_bytes(&mut rng, 65_536);
    let far = random_bytes(&mut rng, MIB as usize + 3);
    let far_at = 8 * (1 << 30) + (1 << 29);
    let f = File::create(src.join("huge.img")).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&head, 0).unwrap();
    f.write_all_at(&far, far_at).unwrap();
    drop(f);
    set_mtime(&src.join("huge.img"), 1_650_000_000, 42);

    let archive = tmp.path().join("a.tar.zst");
    let rep = pack_zst(&src, &archive);
    assert!(rep.warnings.is_empty(), "{:?}", rep.warnings);
    assert_eq!(rep.counts.bytes, size);
    assert!(
        fs::metadata(&archive).unwrap().len() < 4 * MIB,
        "holes are not stored"
    );
    assert_eq!(recount_tar_crate(&archive), rep.counts);

    let dst = tmp.path().join("dst");
    gnu_extract(&archive, &dst);
    let out = File::open(dst.join("huge.img")).unwrap();
    let md = out.metadata().unwrap();
    assert_eq!(md.len(), size);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&md) * 512 < 8 * MIB,
        "restored with holes"
    );
    let read = |at: u64, n: usize| {
        let mut v = vec![0u8; n];
        out.read_exact_at(&mut v, at).unwrap();
        v
    };
    assert_eq!(read(0, head.len()), head);
    assert_eq!(read(far_at, far.len()), far);
    assert!(read(far_at - 4096, 4096).iter().all(|&b| b == 0));
    assert!(read(size - 4096, 4096).iter().all(|&b| b == 0));
    // Everything except the content hash (9 GiB of hashing is left to the fidelity test's 1 GiB file) agrees.
    let no_content = tree::SnapshotOptions { content: false };
    let a = tree::snapshot_with(&src, &no_content).unwrap();
    let b = tree::snapshot_with(&dst, &no_content).unwrap();
    let d = tree::diff(&a, &b, &DiffOptions::default());
    assert!(d.is_empty(), "{}", d.join("\n"));
}

#[test]
fn packing_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    for n in ["b", "a", "c", "B", "ä"] {
        fs::create_dir(src.join(n)).unwrap();
        fs::write(src.join(n).join("f"), n).unwrap();
    }
    let run = || {
        pack(&src, Vec::new(), &PackOptions::default(), &mut |_| {})
            .unwrap()
            .1
    };
    let (x, y) = (run(), run());
    assert_eq!(x, y);
    let names: Vec<Vec<u8>> = tar::Archive::new(&x[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path_bytes().into_owned())
        .collect();
    let want: Vec<&[u8]> = vec![
        b"./",
        b"B/",
        b"B/f",
        b"a/",
        b"a/f",
        b"b/",
        b"b/f",
        b"c/",
        b"c/f",
        "ä/".as_bytes(),
        "ä/f".as_bytes(),
    ];
    assert_eq!(names, want);
}

/// Keep packing a tree (up to `tries` times) while `mutate` runs in a thread; every archive must be valid; stop
/// once `done(warnings)` is satisfied. Returns the warnings of the last run.
fn pack_while<F, D>(
    src: &Path,
    tmp: &Path,
    tries: usize,
    setup: impl Fn(),
    mutate: F,
    done: D,
) -> Vec<String>
where
    F: Fn(&AtomicBool) + Send + Sync + 'static,
    D: Fn(&[String]) -> bool,
{
    let mutate = Arc::new(mutate);
    let mut last = Vec::new();
    for attempt in 0..tries {
        setup();
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (stop, mutate) = (stop.clone(), mutate.clone());
            thread::spawn(move || mutate(&stop))
        };
        let archive = tmp.join(format!("changing-{attempt}.tar.zst"));
        let rep = pack_zst(src, &archive);
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        // Valid whatever happened: GNU tar lists it cleanly, the tar crate reads every entry to its end, and
        // the report's counts are what the archive holds.
        gnu_list(&archive);
        assert_eq!(recount_tar_crate(&archive), rep.counts, "attempt {attempt}");
        fs::remove_file(&archive).unwrap();
        last = rep.warnings;
        if done(&last) {
            return last;
        }
    }
    panic!("the expected warnings never appeared in {tries} attempts; last: {last:?}");
}

#[test]
fn files_growing_and_shrinking_during_pack_give_warnings_and_a_valid_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("before"), b"stable").unwrap();
    fs::write(src.join("zz-after"), b"stable too").unwrap();
    let (grow, shrink) = (src.join("growing.log"), src.join("shrinking.db"));
    let chunk = vec![b'g'; 64 * 1024];
    let setup = {
        let (grow, shrink) = (grow.clone(), shrink.clone());
        move || {
            fs::write(&grow, vec![b'x'; 32 * MIB as usize]).unwrap();
            fs::write(&shrink, vec![b's'; 32 * MIB as usize]).unwrap();
        }
    };
    let warnings = pack_while(
        &src,
        tmp.path(),
        30,
        setup,
        move |stop| {
            let mut g = OpenOptions::new().append(true).open(&grow).unwrap();
            let s = OpenOptions::new().write(true).open(&shrink).unwrap();
            let mut len = 32 * MIB;
            while !stop.load(Ordering::SeqCst) {
                g.write_all(&chunk).unwrap();
                len = if len > MIB { len - MIB } else { 32 * MIB };
                s.set_len(len).unwrap();
            }
        },
        |w| {
            w.iter().any(|l| l.starts_with("growing.log: file grew"))
                && w.iter().any(|l| l.starts_with("shrinking.db: file shrank"))
        },
    );
    assert!(
        warnings
            .iter()
            .all(|w| w.starts_with("growing.log") || w.starts_with("shrinking.db")),
        "{warnings:?}"
    );
}

#[test]
fn entries_vanishing_during_pack_give_warnings_and_a_valid_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let many = src.join("many");
    let dirs = src.join("dirs");
    let setup = {
        let (many, dirs) = (many.clone(), dirs.clone());
        move || {
            let _ = fs::remove_dir_all(&many);
            let _ = fs::remove_dir_all(&dirs);
            fs::create_dir(&many).unwrap();
            for i in 0..5000 {
                fs::write(many.join(format!("f{i:05}")), b"data").unwrap();
            }
            for d in 0..50 {
                let sub = dirs.join(format!("d{d:02}"));
                fs::create_dir_all(&sub).unwrap();
                for i in 0..20 {
                    fs::write(sub.join(format!("f{i}")), b"x").unwrap();
                }
            }
        }
    };
    pack_while(
        &src,
        tmp.path(),
        20,
        setup,
        {
            let (many, dirs) = (many.clone(), dirs.clone());
            move |stop| {
                // Delete from the end so the walk (in name order) meets deleted names, and whole directories.
                for i in (0..5000).rev() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let _ = fs::remove_file(many.join(format!("f{i:05}")));
                    if i % 100 == 0 {
                        let _ = fs::remove_dir_all(dirs.join(format!("d{:02}", 49 - i / 100)));
                    }
                }
            }
        },
        |w| w.iter().any(|l| l.contains("vanished during backup")),
    );
}

/// Run `f` in a thread whose filesystem identity is nobody: root's file capabilities are dropped for that thread
/// only (setfsuid is per thread), so permission bits apply to it.
fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        // SAFETY: plain syscalls changing this thread's filesystem ids.
        unsafe {
            libc::setfsgid(65534);
            libc::setfsuid(65534);
        }
        f()
    })
    .join()
    .unwrap()
}

/// Issue 8 / row 24: an entry that exists but cannot be read is never just a warning. Here the packer runs as
/// nobody (root would bypass the permission bits): the unreadable file and the contents of the closed directory
/// are reported as not archived, with the reason, and everything else is archived.
#[test]
fn issue8_unreadable_entries_are_reported_not_archived_and_an_unreadable_root_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    chmod(tmp.path(), 0o755);
    fs::write(src.join("a-ok"), b"fine").unwrap();
    fs::write(src.join("b-secret"), b"root only").unwrap();
    chmod(&src.join("b-secret"), 0o600);
    fs::create_dir(src.join("c-closed")).unwrap();
    fs::write(src.join("c-closed/f"), b"hidden").unwrap();
    chmod(&src.join("c-closed"), 0o700);
    fs::write(src.join("d-ok"), b"fine too").unwrap();

    let root = src.clone();
    let (rep, tar) = as_nobody(move || {
        pack(&root, Vec::new(), &PackOptions::default(), &mut |_| {}).expect("pack")
    });
    assert!(!rep.is_complete());
    assert_eq!(rep.not_archived_count, 2, "{:?}", rep.not_archived);
    assert_eq!(
        rep.not_archived,
        vec![
            "b-secret: cannot open: Permission denied (os error 13)".to_string(),
            "c-closed/: contents not archived: cannot open directory: Permission denied (os error 13)"
                .to_string(),
        ]
    );
    assert!(rep.warnings.is_empty(), "{:?}", rep.warnings);
    let names: Vec<Vec<u8>> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path_bytes().into_owned())
        .collect();
    // The closed directory itself (mode, owner, mtime) is archived; what it holds is not.
    let want: Vec<&[u8]> = vec![b"./", b"a-ok", b"c-closed/", b"d-ok"];
    assert_eq!(names, want);

    chmod(&src, 0o700);
    let root = src.clone();
    let r = as_nobody(move || {
        pack(&root, Vec::new(), &PackOptions::default(), &mut |_| {}).map(|x| x.0)
    });
    assert!(matches!(r, Err(ArchiveError::Io { .. })), "{r:?}");
}

// -------------------------------------------------------------------------------------------------------------
// Paths longer than PATH_MAX (issue 8): built, packed, listed and extracted with calls relative to directory
// descriptors, as no path-based call can reach them.

fn cstr(s: &[u8]) -> std::ffi::CString {
    std::ffi::CString::new(s).unwrap()
}

fn check(r: libc::c_int, what: &str) {
    assert!(r >= 0, "{what}: {}", io::Error::last_os_error());
}

fn open_dir(dir: RawFd, name: &[u8]) -> OwnedFd {
    let c = cstr(name);
    // SAFETY: valid fd and C string; the fd is owned below.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )
    };
    check(fd, "openat");
    // SAFETY: fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `levels` nested directories of `name_len`-byte names under `root`; returns the deepest (open) and its
/// relative path.
fn deep_dirs(root: &Path, levels: usize, name_len: usize) -> (OwnedFd, Vec<u8>) {
    let mut cur: OwnedFd = File::open(root).unwrap().into();
    let mut rel = Vec::new();
    for i in 0..levels {
        let mut name = format!("{i:03}-").into_bytes();
        name.resize(name_len, b'n');
        let c = cstr(&name);
        // SAFETY: valid fd and C string.
        check(
            unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o750) },
            "mkdirat",
        );
        cur = open_dir(cur.as_raw_fd(), &name);
        rel.extend_from_slice(&name);
        rel.push(b'/');
    }
    (cur, rel)
}

/// In the open directory `dir`: a file with random data and an xattr, a hardlink to it, a symlink with a long
/// target, a FIFO and a subdirectory with an xattr, all with set mtimes.
fn populate_deep(dir: RawFd, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = random_bytes(&mut rng, 100_000);
    let c = cstr(b"data.bin");
    // SAFETY: valid fd and C string; the fd is owned by the File.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o640,
        )
    };
    check(fd, "create data.bin");
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(&data).unwrap();
    xattr::FileExt::set_xattr(&f, "user.deep", b"deep value").unwrap();
    drop(f);
    let h = cstr(b"hard");
    // SAFETY: valid fds and C strings.
    check(
        unsafe { libc::linkat(dir, c.as_ptr(), dir, h.as_ptr(), 0) },
        "linkat",
    );
    let target = cstr(&[b"t/".repeat(150), b"end".to_vec()].concat());
    let l = cstr(b"link");
    // SAFETY: valid fd and C strings.
    check(
        unsafe { libc::symlinkat(target.as_ptr(), dir, l.as_ptr()) },
        "symlinkat",
    );
    let p = cstr(b"fifo");
    // SAFETY: valid fd and C string.
    check(
        unsafe { libc::mkfifoat(dir, p.as_ptr(), 0o600) },
        "mkfifoat",
    );
    let s = cstr(b"sub");
    // SAFETY: valid fd and C string.
    check(
        unsafe { libc::mkdirat(dir, s.as_ptr(), 0o700) },
        "mkdirat sub",
    );
    let sub = File::from(open_dir(dir, b"sub"));
    xattr::FileExt::set_xattr(&sub, "user.sub", b"\x00\xff").unwrap();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 123_456_789,
        },
    ];
    for n in [&c, &h, &l, &p] {
        // SAFETY: valid fd, C string and a two-element array.
        check(
            unsafe { libc::utimensat(dir, n.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) },
            "utimensat",
        );
    }
    data
}

#[test]
fn issue8_paths_longer_than_path_max_are_listed_by_gnu_tar_and_round_trip_through_voltar_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("shallow"), b"near the root").unwrap();
    // 25 levels of 200-byte names: the deepest entries are over 5,000 bytes from the root.
    let (deep, rel) = deep_dirs(&src, 25, 200);
    assert!(rel.len() > 5000);
    let data = populate_deep(deep.as_raw_fd(), 8);
    drop(deep);

    let archive = tmp.path().join("a.tar.zst");
    let rep = pack_zst(&src, &archive);
    assert!(rep.is_complete(), "{:?}", rep.not_archived);
    assert!(rep.warnings.is_empty(), "{:?}", rep.warnings);
    // root + 25 levels + sub; shallow + data.bin; link; hard; fifo.
    assert_eq!(
        rep.counts,
        Counts {
            entries: 32,
            files: 2,
            dirs: 27,
            symlinks: 1,
            hardlinks: 1,
            other: 1,
            bytes: 13 + data.len() as u64,
        }
    );
    assert_eq!(recount_tar_crate(&archive), rep.counts);

    // GNU tar lists the deep entries under their full names, the hardlink pointing at the full deep name.
    let listing = gnu_list(&archive);
    let deep_name = String::from_utf8([rel.clone(), b"data.bin".to_vec()].concat()).unwrap();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with('-') && l.ends_with(&deep_name)),
        "{deep_name} not listed"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with('h') && l.ends_with(&format!("link to {deep_name}"))),
        "hardlink not listed"
    );

    let a = tree::snapshot(&src).unwrap();
    assert_eq!(a.len(), 32, "the snapshot reaches the deep entries too");
    let deep_data = Path::new(std::str::from_utf8(&rel).unwrap()).join("data.bin");
    assert_eq!(
        a[&deep_data].xattrs.get(b"user.deep".as_slice()),
        Some(&b"deep value".to_vec())
    );

    // GNU tar (1.34) cannot extract them: it passes the whole relative name to mkdir/open ("File name too
    // long"). voltar's unpack walks with *at() calls like the packer.
    let by_voltar = tmp.path().join("voltar");
    fs::create_dir(&by_voltar).unwrap();
    let dec = zstd::stream::read::Decoder::new(File::open(&archive).unwrap()).unwrap();
    let urep = unpack::unpack(dec, &by_voltar, &unpack::UnpackOptions::default()).unwrap();
    assert_eq!(urep.counts, rep.counts);
    assert!(urep.warnings.is_empty(), "{:?}", urep.warnings);
    let d = tree::diff(
        &a,
        &tree::snapshot(&by_voltar).unwrap(),
        &DiffOptions::default(),
    );
    assert!(d.is_empty(), "after voltar unpack:\n{}", d.join("\n"));
}

/// A writer that fails after `ok` bytes.
struct FailingSink {
    ok: usize,
}

impl Write for FailingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.ok == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let n = buf.len().min(self.ok);
        self.ok -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_sink_is_a_sink_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), vec![1u8; 3 * MIB as usize]).unwrap();
    for i in 0..100 {
        fs::write(src.join(format!("small{i}")), b"x").unwrap();
    }
    for ok in [
        0,
        100,
        512 * 1024,
        2 * MIB as usize,
        3 * MIB as usize + 10_000,
    ] {
        let r = pack(
            &src,
            FailingSink { ok },
            &PackOptions::default(),
            &mut |_| {},
        );
        match r {
            Err(ArchiveError::Sink(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC)),
            Err(e) => panic!("sink failing after {ok} bytes: wrong error {e:?}"),
            Ok(_) => panic!("sink failing after {ok} bytes: pack succeeded"),
        }
    }
}

#[test]
fn cancel_stops_the_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), vec![1u8; 8 * MIB as usize]).unwrap();
    fs::write(src.join("small"), b"x").unwrap();

    let cancel = AtomicBool::new(true);
    let opts = PackOptions {
        cancel: Some(&cancel),
    };
    assert!(matches!(
        pack(&src, Vec::new(), &opts, &mut |_| {}),
        Err(ArchiveError::Cancelled)
    ));

    // Set during a long read: the packer notices before the file is finished.
    let cancel = AtomicBool::new(false);
    let opts = PackOptions {
        cancel: Some(&cancel),
    };
    let mut seen = 0u64;
    let r = pack(&src, Vec::new(), &opts, &mut |n| {
        seen += n;
        cancel.store(true, Ordering::Relaxed);
    });
    assert!(
        matches!(r, Err(ArchiveError::Cancelled)),
        "{:?}",
        r.map(|x| x.0)
    );
    assert!(
        seen < 8 * MIB,
        "stopped within the big file, after {seen} bytes"
    );
}

mod props {
    //! Random small trees → pack → GNU tar → identical snapshot.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Item {
        File { content: Vec<u8>, mode: u32 },
        Dir { mode: u32 },
        Symlink { target: Vec<u8> },
        Hardlink { to: usize },
        Fifo,
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[a-z]{1,8}".prop_map(|s| s.into_bytes()),
            proptest::collection::vec(1u8..=255, 1..12)
                .prop_filter("no slash", |v| !v.contains(&b'/')
                    && v != b"."
                    && v != b".."),
            (101usize..200).prop_map(|n| vec![b'L'; n]),
        ]
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            4 => (proptest::collection::vec(any::<u8>(), 0..3000), proptest::sample::select(vec![0o644, 0o600, 0o4755, 0o2711, 0o000]))
                .prop_map(|(content, mode)| Item::File { content, mode }),
            2 => proptest::sample::select(vec![0o755, 0o700, 0o1777, 0o2755]).prop_map(|mode| Item::Dir { mode }),
            1 => proptest::collection::vec(1u8..=255, 1..150).prop_map(|target| Item::Symlink { target }),
            1 => (0usize..50).prop_map(|to| Item::Hardlink { to }),
            1 => Just(Item::Fifo),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        #[test]
        fn random_trees_round_trip(
            items in proptest::collection::vec((name(), item(), 0usize..4, any::<u32>(), 0u32..70000), 1..25),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let src = tmp.path().join("src");
            fs::create_dir(&src).unwrap();
            let mut dirs = vec![src.clone()];
            let mut files: Vec<PathBuf> = Vec::new();
            let mut made: Vec<(PathBuf, i64, u32)> = Vec::new();
            for (n, it, parent, ns, owner) in items {
                let parent = dirs[parent % dirs.len()].clone();
                let p = parent.join(OsStr::from_bytes(&n));
                if fs::symlink_metadata(&p).is_ok() {
                    continue;
                }
                match it {
                    Item::File { content, mode } => {
                        fs::write(&p, &content).unwrap();
                        lchown(&p, Some(owner), Some(owner / 2)).unwrap();
                        chmod(&p, mode);
                        files.push(p.clone());
                    }
                    Item::Dir { mode } => {
                        fs::create_dir(&p).unwrap();
                        chmod(&p, mode);
                        dirs.push(p.clone());
                    }
                    Item::Symlink { target } => symlink(OsStr::from_bytes(&target), &p).unwrap(),
                    Item::Hardlink { to } => {
                        if files.is_empty() { continue; }
                        fs::hard_link(&files[to % files.len()], &p).unwrap();
                    }
                    Item::Fifo => mkfifo(&p),
                }
                made.push((p, 1_500_000_000 + i64::from(ns % 100_000_000), ns % 1_000_000_000));
            }
            for (p, s, ns) in &made {
                set_mtime(p, *s, *ns);
            }
            let archive = tmp.path().join("a.tar.zst");
            let rep = pack_zst(&src, &archive);
            prop_assert!(rep.warnings.is_empty(), "{:?}", rep.warnings);
            let dst = tmp.path().join("dst");
            gnu_extract(&archive, &dst);
            let a = tree::snapshot(&src).unwrap();
            let b = tree::snapshot(&dst).unwrap();
            // Root and directory mtimes included: GNU tar restores them (the root's from "./").
            let d = tree::diff(&a, &b, &DiffOptions::default());
            prop_assert!(d.is_empty(), "{}", d.join("\n"));
            prop_assert_eq!(recount_tar_crate(&archive), rep.counts);
        }
    }
}
