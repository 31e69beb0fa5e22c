//! `sealfs fsck`: every kind of damage it must find (with the plaintext path
//! and the chunk range), what `--salvage` repairs, that it never writes a
//! healthy file, and its exit codes (0 clean, 1 all repaired, 4 problems
//! left, 8 could not run).
//!
//! Each test builds its tree through a real mount, unmounts, damages the
//! cipher directory by hand, and runs the binary. Mounts are held by the
//! fixture's guard, so they are torn down even when a test fails.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use common::*;
use sealfs::format::layout::{chunk_data_offset, ciphertext_size};

const CLEAN: i32 = 0;
const REPAIRED: i32 = 1;
const PROBLEMS: i32 = 4;
const COULD_NOT_RUN: i32 = 8;

fn fsck_raw(fx: &Fixture, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec![
        "fsck".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    sealfs(&args)
}

/// Runs `sealfs fsck --json EXTRA…`; returns the exit code and the report.
fn fsck(fx: &Fixture, extra: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(extra);
    let out = fsck_raw(fx, &all);
    let code = out.status.code().expect("fsck exited normally");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "fsck --json printed no JSON ({e}): stdout {stdout}\nstderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

fn problems(report: &Value) -> Vec<Value> {
    report["problems"].as_array().cloned().unwrap_or_default()
}

fn kinds(report: &Value) -> Vec<String> {
    problems(report)
        .iter()
        .map(|p| p["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Creates `rel` through the mount and returns its backing file.
fn make_file(fx: &mut Fixture, rel: &str, data: &[u8]) -> PathBuf {
    let files = fx.new_backing_files(|fx| fs::write(fx.p(rel), data).unwrap());
    assert_eq!(files.len(), 1, "one backing file for {rel}: {files:?}");
    files.into_iter().next().unwrap()
}

/// Creates the directory `rel` through the mount and returns its backing directory.
fn make_dir(fx: &mut Fixture, rel: &str) -> PathBuf {
    let before: std::collections::BTreeSet<_> = fx.cipher_listing().into_iter().collect();
    fs::create_dir(fx.p(rel)).unwrap();
    let dirs: Vec<PathBuf> = fx
        .cipher_listing()
        .into_iter()
        .filter(|p| !before.contains(p))
        .map(|p| fx.cipher.join(p))
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "one backing dir for {rel}");
    dirs.into_iter().next().unwrap()
}

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    Rng::new(seed).bytes(n)
}

/// mtime (ns) and bytes of every backing regular file, except `skip`.
fn backing_state(fx: &Fixture, skip: &[&Path]) -> BTreeMap<PathBuf, (i64, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    walk(&fx.cipher, &mut |p, md| {
        if md.is_file() && !skip.contains(&p) && !p.ends_with("sealfs.lock") {
            out.insert(
                p.to_path_buf(),
                (md.mtime(), md.mtime_nsec(), fs::read(p).unwrap()),
            );
        }
    });
    out
}

fn flip_byte(path: &Path, offset: u64) {
    xor_byte(path, offset, 0x01);
}

#[test]
fn clean_volume_exits_0_and_counts_everything() {
    let mut fx = Fixture::mounted();
    fs::create_dir_all(fx.p("a/b")).unwrap();
    fs::write(fx.p("a/b/three-chunks"), pattern(1, 3 * 4096 + 5)).unwrap();
    fs::write(fx.p("empty"), b"").unwrap();
    fs::write(fx.p(&"n".repeat(230)), b"long name").unwrap();
    std::os::unix::fs::symlink("a/b/three-chunks", fx.p("link")).unwrap();
    fx.unmount();
    let (code, r) = fsck(&fx, &[]);
    assert_eq!(code, CLEAN, "report: {r}");
    assert!(problems(&r).is_empty());
    assert_eq!(r["stats"]["directories"], 3);
    assert_eq!(r["stats"]["files"], 3);
    assert_eq!(r["stats"]["symlinks"], 1);
    assert_eq!(r["stats"]["chunks"], 5);
    // The human form says so too, and stays quiet on stderr (no tty: no bar).
    let out = fsck_raw(&fx, &[]);
    assert_eq!(out.status.code(), Some(CLEAN));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 problem(s)"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn flipped_bit_is_reported_with_path_and_range_and_salvage_zeroes_that_chunk_only() {
    let mut fx = Fixture::mounted();
    fs::create_dir(fx.p("docs")).unwrap();
    let data = pattern(2, 5 * 4096 + 123);
    let victim = make_file(&mut fx, "docs/victim", &data);
    make_file(&mut fx, "docs/healthy", &pattern(3, 70_000));
    make_file(&mut fx, "other", &pattern(4, 10));
    fx.unmount();
    // Chunk 2 (plaintext bytes 8192..12288) gets one flipped bit.
    flip_byte(&victim, chunk_data_offset(2) + 77);
    let healthy_before = backing_state(&fx, &[&victim]);

    let (code, r) = fsck(&fx, &[]);
    assert_eq!(code, PROBLEMS, "report: {r}");
    let ps = problems(&r);
    assert_eq!(ps.len(), 1, "{r}");
    assert_eq!(ps[0]["kind"], "chunk");
    assert_eq!(ps[0]["path"], "/docs/victim");
    assert_eq!(ps[0]["repair"], "not-attempted");
    let range = &ps[0]["ranges"][0];
    assert_eq!(
        (
            &range["first_chunk"],
            &range["last_chunk"],
            &range["start"],
            &range["end"]
        ),
        (
            &Value::from(2),
            &Value::from(2),
            &Value::from(8192),
            &Value::from(12288)
        )
    );
    let human = String::from_utf8_lossy(&fsck_raw(&fx, &[]).stdout).into_owned();
    assert!(
        human.contains("/docs/victim") && human.contains("bytes 8192..12288"),
        "{human}"
    );
    // Checking wrote nothing.
    assert_eq!(backing_state(&fx, &[&victim]), healthy_before);

    let (code, r) = fsck(&fx, &["--salvage"]);
    assert_eq!(code, REPAIRED, "report: {r}");
    assert_eq!(problems(&r)[0]["repair"], "repaired");
    assert_eq!(fsck(&fx, &[]).0, CLEAN);
    // Healthy backing files: not a byte, not an mtime changed.
    assert_eq!(backing_state(&fx, &[&victim]), healthy_before);

    fx.mount();
    let got = fs::read(fx.p("docs/victim")).unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(&got[..8192], &data[..8192], "chunks before stay byte-exact");
    assert!(got[8192..12288].iter().all(|&b| b == 0), "chunk 2 is zeros");
    assert_eq!(
        &got[12288..],
        &data[12288..],
        "chunks after stay byte-exact"
    );
    assert_eq!(fs::read(fx.p("docs/healthy")).unwrap(), pattern(3, 70_000));
}

#[test]
fn truncated_header_is_unrepairable_and_a_cut_file_keeps_its_data() {
    let mut fx = Fixture::mounted();
    let broken = make_file(&mut fx, "broken", &pattern(5, 9000));
    let data = pattern(6, 3 * 4096);
    let cut = make_file(&mut fx, "cut", &data);
    fx.unmount();
    OpenOptions::new()
        .write(true)
        .open(&broken)
        .unwrap()
        .set_len(100)
        .unwrap();
    // Cut at a chunk boundary: the sealed size (docs/FORMAT.md §4.4) still
    // says 3 chunks, so the cut is seen (the first format saw it only
    // through the last-chunk flag, and lost chunk 1 with it).
    OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(ciphertext_size(2 * 4096))
        .unwrap();

    let (code, r) = fsck(&fx, &[]);
    assert_eq!(code, PROBLEMS, "{r}");
    let ps = problems(&r);
    let header = ps.iter().find(|p| p["path"] == "/broken").expect("broken");
    assert_eq!(header["kind"], "header");
    let c = ps.iter().find(|p| p["path"] == "/cut").expect("cut");
    assert_eq!(c["kind"], "truncated");
    assert_eq!(c["ranges"][0]["start"], 8192, "only chunk 2 is gone: {r}");

    let (code, r) = fsck(&fx, &["--salvage"]);
    assert_eq!(code, PROBLEMS, "the header cannot be repaired: {r}");
    let ps = problems(&r);
    let header = ps.iter().find(|p| p["path"] == "/broken").unwrap();
    assert_eq!(header["repair"], "unrepairable");
    let c = ps.iter().find(|p| p["path"] == "/cut").unwrap();
    assert_eq!(c["repair"], "repaired");
    let (_, r) = fsck(&fx, &[]);
    assert_eq!(
        kinds(&r),
        vec!["header"],
        "only the lost header is left: {r}"
    );

    fx.mount();
    // The sealed size stays; the range the cut took is re-sealed as zeros
    // knowingly (reported above, as "truncated" with its range).
    let mut want = data[..8192].to_vec();
    want.resize(data.len(), 0);
    assert_eq!(fs::read(fx.p("cut")).unwrap(), want);
}

#[test]
fn damaged_dir_record_is_restored_from_its_second_copy() {
    let mut fx = Fixture::mounted();
    let d = make_dir(&mut fx, "projects");
    fs::write(fx.p("projects/plan.txt"), b"the plan").unwrap();
    fs::create_dir(fx.p("projects/sub")).unwrap();
    fs::write(fx.p("projects/sub/deep"), pattern(7, 5000)).unwrap();
    fx.unmount();
    // Garbage over the first copy of /projects, the root's first copy gone.
    fs::write(d.join("sealfs.dir"), pattern(8, 160)).unwrap();
    fs::remove_file(fx.cipher.join("sealfs.dir")).unwrap();

    let (code, r) = fsck(&fx, &[]);
    assert_eq!(code, PROBLEMS, "{r}");
    let ps = problems(&r);
    assert_eq!(ps.len(), 2, "{r}");
    assert!(ps.iter().all(|p| p["kind"] == "dir-record-copy"), "{r}");
    assert!(ps.iter().any(|p| p["path"] == "/projects"), "{r}");
    assert!(ps.iter().any(|p| p["path"] == "/"), "{r}");
    // Every name below was still checked, through the second copy.
    assert_eq!(r["stats"]["files"], 2);

    let (code, r) = fsck(&fx, &["--salvage"]);
    assert_eq!(code, REPAIRED, "{r}");
    assert_eq!(
        fs::read(d.join("sealfs.dir")).unwrap(),
        fs::read(d.join("sealfs.dir.bak")).unwrap()
    );
    assert!(fx.cipher.join("sealfs.dir").exists());
    assert_eq!(fsck(&fx, &[]).0, CLEAN);

    fx.mount();
    assert_eq!(fs::read(fx.p("projects/plan.txt")).unwrap(), b"the plan");
    assert_eq!(
        fs::read(fx.p("projects/sub/deep")).unwrap(),
        pattern(7, 5000)
    );
}

#[test]
fn both_dir_record_copies_lost_is_reported_as_lost_names() {
    let mut fx = Fixture::mounted();
    let d = make_dir(&mut fx, "gone");
    fs::write(fx.p("gone/x"), b"x").unwrap();
    fx.unmount();
    fs::write(d.join("sealfs.dir"), b"").unwrap();
    fs::remove_file(d.join("sealfs.dir.bak")).unwrap();
    let (code, r) = fsck(&fx, &["--salvage"]);
    assert_eq!(code, PROBLEMS, "{r}");
    let p = &problems(&r)[0];
    assert_eq!(p["kind"], "dir-record-lost");
    assert_eq!(p["path"], "/gone");
    assert_eq!(p["repair"], "unrepairable");
}

#[test]
fn moved_ciphertext_is_reported_and_salvaged_into_lost_found() {
    let mut fx = Fixture::mounted();
    fs::create_dir(fx.p("x")).unwrap();
    let yb = make_dir(&mut fx, "y");
    let a = make_file(&mut fx, "x/a", b"content of a");
    let b = make_file(&mut fx, "x/b", b"content of b");
    let moved = make_file(&mut fx, "x/moved", &pattern(9, 9000));
    fx.unmount();
    // Same directory: a's ciphertext replaces b's (b's name, a's key binding).
    fs::rename(&a, &b).unwrap();
    // Another directory: x/moved's ciphertext now sits in y.
    fs::rename(&moved, yb.join(moved.file_name().unwrap())).unwrap();

    let (code, r) = fsck(&fx, &[]);
    assert_eq!(code, PROBLEMS, "{r}");
    let ps = problems(&r);
    let swapped = ps.iter().find(|p| p["path"] == "/x/b").expect("/x/b");
    assert_eq!(swapped["kind"], "context-mismatch");
    let orphan = ps.iter().find(|p| p["kind"] == "orphan").expect("orphan");
    assert_eq!(
        orphan["path"], "/x/moved",
        "recognised by its name key: {r}"
    );

    let (code, r) = fsck(&fx, &["--salvage"]);
    assert_eq!(code, PROBLEMS, "the swapped file cannot be repaired: {r}");
    let orphan = problems(&r)
        .into_iter()
        .find(|p| p["kind"] == "orphan")
        .unwrap();
    assert_eq!(orphan["repair"], "repaired");
    assert_eq!(orphan["action"], "moved to /lost+found/moved");

    fx.mount();
    assert_eq!(
        fs::read(fx.p("lost+found/moved")).unwrap(),
        pattern(9, 9000)
    );
    assert!(
        fs::read(fx.p("x/b")).is_err(),
        "a moved header never decrypts"
    );
}

#[test]
fn orphans_go_to_lost_found_and_leftovers_are_removed() {
    let mut fx = Fixture::mounted();
    let d = make_dir(&mut fx, "d");
    fs::write(fx.p("d/keep"), b"keep").unwrap();
    fx.unmount();
    fs::write(d.join("junk"), b"raw bytes nobody owns").unwrap();
    fs::write(d.join("sealfs.dir.tmp"), b"half a record").unwrap();
    fs::write(fx.cipher.join("sealfs.L.nosuchentry.name"), b"x").unwrap();

    let (code, r) = fsck(&fx, &[]);
    assert_eq!(code, PROBLEMS, "{r}");
    let mut k = kinds(&r);
    k.sort();
    assert_eq!(k, vec!["orphan", "stray-sidecar", "temp-file"], "{r}");

    let (code, r) = fsck(&fx, &["--salvage"]);
    assert_eq!(code, REPAIRED, "{r}");
    assert!(!d.join("junk").exists());
    assert!(!d.join("sealfs.dir.tmp").exists());
    assert!(!fx.cipher.join("sealfs.L.nosuchentry.name").exists());
    assert_eq!(fsck(&fx, &[]).0, CLEAN);

    fx.mount();
    let names: Vec<String> = fs::read_dir(fx.p("lost+found"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["raw-junk"]);
    assert_eq!(
        fs::read(fx.p("lost+found/raw-junk")).unwrap(),
        b"raw bytes nobody owns"
    );
    assert_eq!(fs::read(fx.p("d/keep")).unwrap(), b"keep");
}

#[test]
fn damaged_keyring_copy_and_config_are_restored() {
    let mut fx = Fixture::mounted();
    fs::write(fx.p("f"), b"data").unwrap();
    fx.unmount();
    let bak = fs::read(fx.cipher.join("sealfs.keyring.bak")).unwrap();
    let mut bad = fs::read(fx.cipher.join("sealfs.keyring")).unwrap();
    let n = bad.len();
    bad[n - 5] ^= 0xff;
    fs::write(fx.cipher.join("sealfs.keyring"), &bad).unwrap();
    fs::write(fx.cipher.join("sealfs.toml"), b"not = [toml").unwrap();

    let (code, r) = fsck(&fx, &[]);
    assert_eq!(code, PROBLEMS, "{r}");
    let mut k = kinds(&r);
    k.sort();
    assert_eq!(k, vec!["config", "keyring"], "{r}");
    let (code, r) = fsck(&fx, &["--salvage"]);
    assert_eq!(code, REPAIRED, "{r}");
    assert_eq!(fs::read(fx.cipher.join("sealfs.keyring")).unwrap(), bak);
    assert_eq!(fsck(&fx, &[]).0, CLEAN);
    fx.mount();
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"data");
}

#[test]
fn could_not_run_exit_code_for_wrong_passphrase_mounted_volume_and_non_volume() {
    let mut fx = Fixture::mounted();
    fs::write(fx.p("f"), b"data").unwrap();
    // Mounted: refused, nothing checked.
    let out = fsck_raw(&fx, &[]);
    assert_eq!(out.status.code(), Some(COULD_NOT_RUN));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use") && err.contains("unmount"), "{err}");
    fx.unmount();

    let wrong = fx.scratch.join("wrong");
    fs::write(&wrong, "not the passphrase\n").unwrap();
    let out = sealfs(&[
        "fsck".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        wrong.as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(COULD_NOT_RUN));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong passphrase or key file"), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON error object");
    assert_eq!(v["exit_code"], COULD_NOT_RUN);

    let out = sealfs(&[
        "fsck".as_ref(),
        fx.scratch.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(COULD_NOT_RUN));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a sealfs volume"));
    // The help documents the codes.
    let help = sealfs(&["fsck".as_ref(), "--help".as_ref()]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit codes") && help.contains("8 fsck could not"),
        "{help}"
    );
}

#[test]
fn stale_keyring_backup_is_reported_and_resynced_by_the_next_mount() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let before_rotate = fs::read(fx.cipher.join("sealfs.keyring")).unwrap();
    let sock = fx.ctl_socket.clone();
    let out = sealfs(&[
        "ctl".as_ref(),
        "--socket".as_ref(),
        sock.as_os_str(),
        "rotate".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(fx.p("after-rotate"), b"wrapped under v2").unwrap();
    fx.unmount();
    // As if the kill came between the two writes of the keyring.
    fs::write(fx.cipher.join("sealfs.keyring.bak"), &before_rotate).unwrap();
    let (code, r) = fsck(&fx, &[]);
    assert_eq!(code, PROBLEMS, "{r}");
    let p = &problems(&r)[0];
    assert_eq!(p["kind"], "keyring");
    assert_eq!(p["backing"], "sealfs.keyring.bak");
    assert!(p["message"].as_str().unwrap().contains("stale"), "{r}");
    // A writable open (the mount) brings the second copy in line.
    fx.mount();
    fx.unmount();
    assert_eq!(
        fs::read(fx.cipher.join("sealfs.keyring.bak")).unwrap(),
        fs::read(fx.cipher.join("sealfs.keyring")).unwrap()
    );
    assert_eq!(fsck(&fx, &[]).0, CLEAN);
}

#[test]
fn empty_directory_without_its_record_is_removed_by_salvage() {
    let mut fx = Fixture::mounted();
    let d = make_dir(&mut fx, "half-made");
    fs::create_dir(fx.p("kept")).unwrap();
    fx.unmount();
    // As a crash inside mkdir (before the record) or rmdir (after it) leaves it.
    fs::remove_file(d.join("sealfs.dir")).unwrap();
    fs::remove_file(d.join("sealfs.dir.bak")).unwrap();
    let (code, r) = fsck(&fx, &[]);
    assert_eq!(code, PROBLEMS, "{r}");
    let p = &problems(&r)[0];
    assert_eq!(p["kind"], "dir-record-lost");
    assert_eq!(p["path"], "/half-made");
    let (code, r) = fsck(&fx, &["--salvage"]);
    assert_eq!(code, REPAIRED, "{r}");
    assert!(!d.exists());
    assert_eq!(fsck(&fx, &[]).0, CLEAN);
    fx.mount();
    let names: Vec<_> = fs::read_dir(&fx.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("kept")]);
}

/// Makes a chain of `depth` nested directories `d/d/d/…` under `top`
/// (relative to directory fds: the path would exceed PATH_MAX), with a
/// file at the bottom.
fn deep_tree(top: &Path, depth: usize) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fd = OwnedFd::from(fs::File::open(top).unwrap());
    let d = cpath(Path::new("d"));
    for _ in 0..depth {
        // SAFETY: valid fd and C string.
        assert_eq!(
            unsafe { libc::mkdirat(fd.as_raw_fd(), d.as_ptr(), 0o755) },
            0,
            "mkdirat: {}",
            io_err()
        );
        // SAFETY: as above; the new fd is owned.
        let n = unsafe {
            libc::openat(
                fd.as_raw_fd(),
                d.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            )
        };
        assert!(n >= 0, "openat: {}", io_err());
        // SAFETY: n was just returned by openat.
        fd = unsafe { OwnedFd::from_raw_fd(n) };
    }
    let f = cpath(Path::new("bottom"));
    // SAFETY: valid fd and C string.
    let n = unsafe {
        libc::openat(
            fd.as_raw_fd(),
            f.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT,
            0o644,
        )
    };
    assert!(n >= 0, "create: {}", io_err());
    // SAFETY: n is ours.
    let file = fs::File::from(unsafe { OwnedFd::from_raw_fd(n) });
    std::io::Write::write_all(&mut &file, b"deep down").unwrap();
}

fn io_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

#[test]
fn a_thousand_levels_deep_tree_is_walked_by_census_rewrap_and_fsck() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    deep_tree(&fx.mnt, 1000);
    let sock = fx.ctl_socket.clone();
    let ctl = |args: &[&str]| {
        let mut all: Vec<&OsStr> = vec!["ctl".as_ref(), "--socket".as_ref(), sock.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        let out = sealfs(&all);
        assert!(
            out.status.success(),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Both walk the whole tree on a daemon thread (a recursive walk
    // overflowed its stack and took the mount down).
    ctl(&["census"]);
    ctl(&["rotate"]);
    ctl(&["rewrap"]);
    assert!(fx.daemon_alive(), "the daemon survived the walks");
    fx.unmount();
    let (code, r) = fsck(&fx, &[]);
    assert_eq!(code, CLEAN, "{r}");
    assert_eq!(r["stats"]["directories"], 1001);
    assert_eq!(r["stats"]["files"], 1);
}

fn fsck_live(fx: &Fixture, extra: &[&str]) -> (i32, Value) {
    let mut args: Vec<&OsStr> = vec![
        "fsck".as_ref(),
        "--socket".as_ref(),
        fx.ctl_socket.as_os_str(),
        "--json".as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let out = sealfs(&args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck --socket printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), v)
}

#[test]
fn mounted_volume_is_checked_through_the_control_socket() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::create_dir(fx.p("d")).unwrap();
    let victim = make_file(&mut fx, "d/victim", &pattern(10, 3 * 4096));
    for i in 0..4 {
        fs::write(fx.p(&format!("d/busy{i}")), pattern(i, 50_000)).unwrap();
    }
    let (code, r) = fsck_live(&fx, &[]);
    assert_eq!(code, CLEAN, "{r}");
    assert_eq!(r["stats"]["files"], 5);

    // Writers and renames keep going while it checks: nothing may show up.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (stop, mnt) = (stop.clone(), fx.mnt.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(11);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = rng.below(4);
                let p = mnt.join(format!("d/busy{i}"));
                let f = OpenOptions::new().write(true).open(&p).unwrap();
                f.write_all_at(&rng.bytes(200_000), rng.below(60_000))
                    .unwrap();
                drop(f);
                let q = mnt.join(format!("d/moving{}", n % 2));
                let _ = fs::write(&q, rng.bytes(5000));
                let _ = fs::rename(&q, mnt.join(format!("d/moved{}", n % 3)));
                n += 1;
            }
        })
    };
    for _ in 0..8 {
        let (code, r) = fsck_live(&fx, &[]);
        assert_eq!(code, CLEAN, "a live check under load found: {r}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    worker.join().unwrap();

    // Damage behind the daemon's back is found, with path and range.
    flip_byte(&victim, chunk_data_offset(1) + 5);
    let (code, r) = fsck_live(&fx, &[]);
    assert_eq!(code, PROBLEMS, "{r}");
    let p = &problems(&r)[0];
    assert_eq!(
        (&p["kind"], &p["path"]),
        (&Value::from("chunk"), &Value::from("/d/victim"))
    );
    assert_eq!(p["ranges"][0]["start"], 4096);
    // Salvage needs the volume unmounted.
    let out = sealfs(&[
        "fsck".as_ref(),
        "--mount".as_ref(),
        fx.mnt.as_os_str(),
        "--salvage".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    // Human output through the mount point's default socket path works too.
    fx.unmount();
    fx.mount();
    let sock = sealfs::ctl::default_socket_path(&fx.mnt);
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            start.elapsed() < TIMEOUT,
            "control socket {} not ready",
            sock.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = sealfs(&["fsck".as_ref(), "--mount".as_ref(), fx.mnt.as_os_str()]);
    assert_eq!(out.status.code(), Some(PROBLEMS));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/d/victim"));
}
