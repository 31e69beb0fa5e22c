//! `sealfs import` and `sealfs export`: a round trip of a tree with nested
//! directories, symlinks, odd modes, set times, empty and multi-chunk files
//! is byte-exact (`diff -r`) and keeps modes and times (compared with
//! lstat); what import wrote reads back the same through a mount; a re-run
//! changes nothing; an interrupted run never leaves a half file under its
//! final name and its leftovers are cleaned by the next run; special files
//! are reported, hard links and xattrs are kept; the exit codes; the progress bar is drawn
//! on a terminal, fits its width, and never goes into a pipe.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

fn run(args: &[&OsStr]) -> Output {
    sealfs(args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

fn import_args<'a>(
    src: &'a Path,
    cipher: &'a Path,
    pass: &'a Path,
    extra: &'a [&'a str],
) -> Vec<&'a OsStr> {
    let mut a: Vec<&OsStr> = vec![
        "import".as_ref(),
        src.as_os_str(),
        cipher.as_os_str(),
        "--passfile".as_ref(),
        pass.as_os_str(),
    ];
    a.extend(FAST_KDF.iter().map(OsStr::new));
    a.extend(extra.iter().map(OsStr::new));
    a
}

fn import(src: &Path, cipher: &Path, pass: &Path, extra: &[&str]) -> Output {
    run(&import_args(src, cipher, pass, extra))
}

fn export(cipher: &Path, dst: &Path, pass: &Path, extra: &[&str]) -> Output {
    let mut a: Vec<&OsStr> = vec![
        "export".as_ref(),
        cipher.as_os_str(),
        dst.as_os_str(),
        "--passfile".as_ref(),
        pass.as_os_str(),
    ];
    a.extend(extra.iter().map(OsStr::new));
    run(&a)
}

#[track_caller]
fn assert_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: stdout {} stderr {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
}

fn set_times(p: &Path, atime: SystemTime, mtime: SystemTime) {
    let ts = |t: SystemTime| {
        let d = t.duration_since(UNIX_EPOCH);
        match d {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let mut s = -(d.as_secs() as i64);
                let mut n = d.subsec_nanos() as i64;
                if n > 0 {
                    s -= 1;
                    n = 1_000_000_000 - n;
                }
                libc::timespec {
                    tv_sec: s,
                    tv_nsec: n,
                }
            }
        }
    };
    let times = [ts(atime), ts(mtime)];
    let c = cpath(p);
    // SAFETY: valid C string and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}: {}", p.display(), errno());
}

fn at(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}

/// A tree with what a real home directory has, and what trips copies up.
fn make_tree(root: &Path) {
    let mut rng = Rng::new(7);
    let d = |p: &str| {
        fs::create_dir_all(root.join(p)).unwrap();
    };
    let f = |p: &str, data: &[u8]| fs::write(root.join(p), data).unwrap();
    d("docs/2024/q1");
    d("docs/2024/q2");
    d("empty-dir");
    d("sticky");
    d("locked");
    d("deep/a/b/c/d/e/f/g");
    f("empty", b"");
    f("one", b"x");
    f("docs/4095", &rng.bytes(4095));
    f("docs/4096", &rng.bytes(4096));
    f("docs/4097", &rng.bytes(4097));
    f("docs/2024/q1/report.bin", &rng.bytes(1024 * 1024 + 3));
    f("docs/2024/q2/big.bin", &rng.bytes(3 * 1024 * 1024 + 17));
    f("deep/a/b/c/d/e/f/g/leaf", b"leaf\n");
    f("locked/secret", b"only root reads me\n");
    f("sticky/setuid-tool", b"#!/bin/sh\necho hi\n");
    f("name with spaces & ünïcödé", b"odd name\n");
    f(&"n".repeat(255), b"long name\n");
    std::os::unix::fs::symlink("docs/4096", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("../nowhere/at/all", root.join("docs/dangling")).unwrap();
    std::os::unix::fs::symlink("2024", root.join("docs/link-to-dir")).unwrap();
    let chmod = |p: &str, m: u32| {
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(m)).unwrap();
    };
    chmod("one", 0o600);
    chmod("docs/4095", 0o444);
    chmod("docs/4097", 0o000);
    chmod("sticky/setuid-tool", 0o4755);
    chmod("sticky", 0o1777);
    chmod("docs/2024/q1", 0o750);
    // Times with nanoseconds, one before 1970 and one far ahead.
    set_times(
        &root.join("docs/2024/q1/report.bin"),
        at(1_600_000_000, 111_111_111),
        at(1_500_000_000, 123_456_789),
    );
    set_times(
        &root.join("one"),
        at(-1_000_000, 5),
        at(-86_400 * 365, 999_999_999),
    );
    set_times(
        &root.join("empty"),
        at(4_000_000_000, 1),
        at(4_000_000_000, 2),
    );
    set_times(
        &root.join("link-rel"),
        at(1_234_567_890, 0),
        at(1_234_567_890, 42),
    );
    // Directories last (writing into them changes their mtime); read-only ones too.
    set_times(
        &root.join("docs/2024"),
        at(1_700_000_000, 7),
        at(1_700_000_000, 8),
    );
    set_times(
        &root.join("empty-dir"),
        at(1_000_000_000, 0),
        at(1_000_000_001, 0),
    );
    chmod("locked", 0o500);
    chmod("empty-dir", 0o555);
}

/// kind, mode, size, mtime (s, ns), atime (s, ns) for files, link target.
type Stat = (u32, u64, (i64, i64), Option<(i64, i64)>, Option<PathBuf>);

/// lstat of every entry under `root` (not `root` itself).
fn stats(root: &Path) -> BTreeMap<PathBuf, Stat> {
    let mut paths = Vec::new();
    walk(root, &mut |p, _| paths.push(p.to_path_buf()));
    let mut out = BTreeMap::new();
    for p in paths {
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        out.insert(
            p.strip_prefix(root).unwrap().to_path_buf(),
            (
                md.mode(),
                if ft.is_dir() { 0 } else { md.len() },
                (md.mtime(), md.mtime_nsec()),
                // Directory and symlink atimes move whenever they are read.
                ft.is_file().then(|| (md.atime(), md.atime_nsec())),
                ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
            ),
        );
    }
    out
}

#[track_caller]
fn assert_same_stats(a: &BTreeMap<PathBuf, Stat>, b: &BTreeMap<PathBuf, Stat>, what: &str) {
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "{what}: different entries");
    for (k, sa) in a {
        assert_eq!(
            sa,
            &b[k],
            "{what}: {} differs (mode, size, mtime, atime, target)",
            k.display()
        );
    }
}

#[track_caller]
fn assert_diff_clean(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .stdin(Stdio::null())
        .output()
        .expect("run diff");
    assert!(
        out.status.success(),
        "diff -r {} {}:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn round_trip_is_byte_exact_and_keeps_modes_times_and_symlinks() {
    let mut fx = Fixture::new();
    let src = fx.scratch.join("src");
    make_tree(&src);
    // Read every directory once, so relatime has nothing left to update.
    let _ = stats(&src);
    let before = stats(&src);

    let o = import(&src, &fx.cipher, &fx.passfile, &["--json"]);
    assert_code(&o, 0, "import");
    let r = json_of(&o);
    assert_eq!(r["created_volume"], false);
    assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["files_copied"], 12, "{r}");
    assert_eq!(r["symlinks"], 4, "{r}");
    assert_eq!(r["directories_created"], 15, "{r}");
    assert_eq!(
        r["bytes_copied"].as_u64().unwrap(),
        before
            .values()
            .filter(|s| s.3.is_some())
            .map(|s| s.1)
            .sum::<u64>()
    );
    // Reading the source did not change it (O_NOATIME).
    assert_same_stats(&before, &stats(&src), "source after import");

    // What import wrote, a mount shows the same (stats only: reading
    // files through the mount moves their access times, as it should).
    fx.mount_with(&["--read-only"]);
    assert_same_stats(&before, &stats(&fx.mnt), "through the mount");
    fx.unmount();

    // Export and compare again (stats first: diff reads directories).
    let out = fx.scratch.join("out");
    let o = export(&fx.cipher, &out, &fx.passfile, &["--json"]);
    assert_code(&o, 0, "export");
    let r = json_of(&o);
    assert_eq!(r["files_copied"], 12, "{r}");
    assert_eq!(r["symlinks"], 4, "{r}");
    assert_same_stats(&before, &stats(&out), "exported tree");
    assert_diff_clean(&src, &out);
    // No temp file left anywhere.
    let mut temps = Vec::new();
    walk(&out, &mut |p, _| {
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .contains("sealfs-export")
        {
            temps.push(p.to_path_buf())
        }
    });
    assert!(temps.is_empty(), "{temps:?}");
    // And the content through a mount.
    fx.mount_with(&["--read-only"]);
    assert_diff_clean(&src, &fx.mnt);
    fx.unmount();
    // The volume is clean and holds no leftovers (last: fsck reads every
    // chunk, which moves the files' access times).
    let o = run(&[
        "fsck".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
    ]);
    assert_code(&o, 0, "fsck after import");
}

#[test]
fn import_creates_the_volume_and_a_rerun_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().canonicalize().unwrap();
    let src = base.join("src");
    make_tree(&src);
    let pass = base.join("pass");
    fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    let cipher = base.join("new").join("vault.enc");

    let o = import(&src, &cipher, &pass, &["--json", "--threads", "3"]);
    assert_code(&o, 0, "import into a new volume");
    let r = json_of(&o);
    assert_eq!(r["created_volume"], true, "{r}");
    assert!(cipher.join("sealfs.toml").exists());

    let digest = |c: &Path| {
        let mut m = BTreeMap::new();
        walk(c, &mut |p, md| {
            // O_NOATIME: reading ciphertext would move the files' access times.
            let content = if md.is_file() {
                let mut v = Vec::new();
                fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOATIME)
                    .open(p)
                    .and_then(|mut f| f.read_to_end(&mut v))
                    .unwrap();
                v
            } else {
                Vec::new()
            };
            m.insert(
                p.to_path_buf(),
                (md.mode(), md.mtime(), md.mtime_nsec(), content),
            );
        });
        m
    };
    let d1 = digest(&cipher);

    // Run again: nothing is copied, no ciphertext is rewritten.
    let o = import(&src, &cipher, &pass, &["--json"]);
    assert_code(&o, 0, "re-run");
    let r = json_of(&o);
    assert_eq!(r["created_volume"], false);
    assert_eq!(r["files_copied"], 0, "{r}");
    assert_eq!(r["files_unchanged"], 12, "{r}");
    assert_eq!(r["symlinks"], 0, "{r}");
    assert_eq!(r["symlinks_unchanged"], 4, "{r}");
    assert_eq!(r["directories_created"], 0, "{r}");
    let d2 = digest(&cipher);
    assert_eq!(
        d1.keys().collect::<Vec<_>>(),
        d2.keys().collect::<Vec<_>>(),
        "a re-run added or removed ciphertext"
    );
    for (k, v) in &d1 {
        // Files and symlinks stay as they were (directories get their
        // times and modes set again).
        if !fs::symlink_metadata(k).unwrap().is_dir() {
            assert_eq!(v, &d2[k], "{} was rewritten by a re-run", k.display());
        }
    }

    // A changed file, a new one and a new mode are picked up, and only they.
    fs::write(src.join("docs/4096"), b"changed").unwrap();
    fs::write(src.join("new-file"), b"new").unwrap();
    fs::set_permissions(src.join("docs/4097"), fs::Permissions::from_mode(0o640)).unwrap();
    let o = import(&src, &cipher, &pass, &["--json"]);
    assert_code(&o, 0, "third run");
    let r = json_of(&o);
    assert_eq!(r["files_copied"], 2, "{r}");
    assert_eq!(r["files_unchanged"], 11, "{r}");

    let out = base.join("out");
    let _ = stats(&src);
    let before = stats(&src);
    assert_code(&export(&cipher, &out, &pass, &[]), 0, "export");
    assert_same_stats(&before, &stats(&out), "after re-runs");
    assert_diff_clean(&src, &out);

    // Exporting again into the same place copies nothing.
    let o = export(&cipher, &out, &pass, &["--json"]);
    assert_code(&o, 0, "export re-run");
    let r = json_of(&o);
    assert_eq!(r["files_copied"], 0, "{r}");
    assert_eq!(r["files_unchanged"], 13, "{r}");
}

#[test]
fn an_interrupted_import_leaves_no_half_file_and_the_next_run_finishes() {
    let fx = Fixture::new();
    let src = fx.scratch.join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let mut rng = Rng::new(11);
    for i in 0..24 {
        fs::write(
            src.join(format!("d/f{i:02}")),
            rng.bytes(2 * 1024 * 1024 + i),
        )
        .unwrap();
    }
    // Kill the import while it writes (SIGKILL: no cleanup at all).
    let mut child = Command::new(bin())
        .arg("import")
        .arg(&src)
        .arg(&fx.cipher)
        .arg("--passfile")
        .arg(&fx.passfile)
        .arg("--threads")
        .arg("2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first staged temp file (the copy is under way), then kill.
    let start = Instant::now();
    let staged_in = |c: &Path| {
        let mut n = 0;
        walk(c, &mut |p, _| {
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sealfs-staged-")
            {
                n += 1;
            }
        });
        n
    };
    while staged_in(&fx.cipher) == 0 && start.elapsed() < Duration::from_secs(20) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(150));
    let _ = child.kill();
    let st = child.wait().unwrap();
    let interrupted = staged_in(&fx.cipher);
    eprintln!("import killed ({st}); {interrupted} staged temp file(s) left");

    // Whatever made it under its final name is complete.
    let partial = fx.scratch.join("partial");
    let o = export(&fx.cipher, &partial, &fx.passfile, &["--json"]);
    assert_code(&o, 0, "export of an interrupted import");
    let mut seen = 0;
    if partial.join("d").exists() {
        for e in fs::read_dir(partial.join("d")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            assert_eq!(
                fs::read(e.path()).unwrap(),
                fs::read(src.join("d").join(&name)).unwrap(),
                "{name:?} is under its final name but not complete"
            );
            seen += 1;
        }
    }
    assert!(seen < 24 || interrupted == 0, "the kill came after the end");
    // fsck sees the leftovers as temp files, nothing worse.
    let o = run(&[
        "fsck".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
        "--json".as_ref(),
    ]);
    let r = json_of(&o);
    for p in r["problems"].as_array().unwrap() {
        assert_eq!(p["kind"], "temp-file", "{p}");
    }

    // The next run removes the leftovers and finishes the job.
    let o = import(&src, &fx.cipher, &fx.passfile, &["--json"]);
    assert_code(&o, 0, "second import");
    let r = json_of(&o);
    assert_eq!(
        r["leftovers_removed"].as_u64().unwrap(),
        interrupted as u64,
        "{r}"
    );
    assert_eq!(
        r["files_copied"].as_u64().unwrap() + r["files_unchanged"].as_u64().unwrap(),
        24
    );
    assert_eq!(staged_in(&fx.cipher), 0);
    let o = run(&[
        "fsck".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
    ]);
    assert_code(&o, 0, "fsck after the second import");
    let out = fx.scratch.join("out");
    assert_code(&export(&fx.cipher, &out, &fx.passfile, &[]), 0, "export");
    assert_diff_clean(&src, &out);
}

#[test]
fn an_interrupted_export_leaves_temp_files_only_and_the_next_run_removes_them() {
    let fx = Fixture::new();
    let src = fx.scratch.join("src");
    make_tree(&src);
    assert_code(&import(&src, &fx.cipher, &fx.passfile, &[]), 0, "import");
    let out = fx.scratch.join("out");
    assert_code(&export(&fx.cipher, &out, &fx.passfile, &[]), 0, "export");
    // What a killed export leaves: temp files beside their targets, and a
    // target still missing.
    fs::write(out.join(".sealfs-export-99999-0.tmp"), b"half").unwrap();
    fs::write(out.join("docs/2024/.sealfs-export-99999-1.tmp"), b"half").unwrap();
    fs::remove_file(out.join("docs/2024/q2/big.bin")).unwrap();
    let o = export(&fx.cipher, &out, &fx.passfile, &["--json"]);
    assert_code(&o, 0, "export re-run");
    let r = json_of(&o);
    assert_eq!(r["leftovers_removed"], 2, "{r}");
    assert_eq!(r["files_copied"], 1, "{r}");
    assert_diff_clean(&src, &out);
}

#[test]
fn special_files_are_reported_and_hard_links_kept() {
    let mut fx = Fixture::new();
    let src = fx.scratch.join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a"), b"shared content").unwrap();
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    fs::hard_link(src.join("a"), src.join("d/c")).unwrap();
    fs::write(src.join("single"), b"one name").unwrap();
    let fifo = cpath(&src.join("pipe"));
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    let o = import(&src, &fx.cipher, &fx.passfile, &[]);
    assert_code(&o, 3, "import with a FIFO");
    let err = stderr(&o);
    assert!(err.contains("pipe: FIFO not imported"), "{err}");
    assert!(err.contains("2 name(s) kept as hard links"), "{err}");
    // A re-run finds the links in place.
    let o = import(&src, &fx.cipher, &fx.passfile, &["--json"]);
    assert_code(&o, 3, "import --json with a FIFO");
    let r = json_of(&o);
    assert_eq!(r["hard_linked"], 2, "{r}");
    assert_eq!(r["files_copied"], 0, "{r}");
    let problems = r["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{r}");
    assert_eq!(problems[0]["kind"], "special");
    assert_eq!(problems[0]["path"], "pipe");
    // Through a mount: one file with three names.
    fx.mount();
    let ino = fs::metadata(fx.p("a")).unwrap().ino();
    for n in ["a", "b", "d/c"] {
        let m = fs::metadata(fx.p(n)).unwrap();
        assert_eq!((m.ino(), m.nlink()), (ino, 3), "{n}");
        assert_eq!(fs::read(fx.p(n)).unwrap(), b"shared content");
    }
    assert_eq!(fs::metadata(fx.p("single")).unwrap().nlink(), 1);
    fx.unmount();
    // Exported: hard links again, and a re-run keeps them.
    let out = fx.scratch.join("out");
    for run in ["export", "export re-run"] {
        assert_code(&export(&fx.cipher, &out, &fx.passfile, &[]), 0, run);
        let ino = fs::metadata(out.join("a")).unwrap().ino();
        for n in ["a", "b", "d/c"] {
            let m = fs::metadata(out.join(n)).unwrap();
            assert_eq!((m.ino(), m.nlink()), (ino, 3), "{run}: {n}");
            assert_eq!(fs::read(out.join(n)).unwrap(), b"shared content");
        }
    }
    assert!(!out.join("pipe").exists());
    // An export over separate copies of the names links them.
    fs::remove_file(out.join("b")).unwrap();
    fs::write(out.join("b"), b"a stale copy").unwrap();
    assert_code(
        &export(&fx.cipher, &out, &fx.passfile, &[]),
        0,
        "export over a copy",
    );
    assert_eq!(
        fs::metadata(out.join("b")).unwrap().ino(),
        fs::metadata(out.join("a")).unwrap().ino()
    );
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let c = cpath(p);
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name} on {}: {}", p.display(), io_err());
}

fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = cpath(p);
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

fn io_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Extended attributes of files and directories survive import and
/// export (`user.*`, and `trusted.*` as root), and read back through a
/// mount; sealfs's own backing attributes never leak into an export.
#[test]
fn xattrs_survive_import_and_export() {
    let mut fx = Fixture::new();
    let src = fx.scratch.join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/f"), b"content").unwrap();
    setxattr(&src.join("dir/f"), "user.origin", b"https://example.org/f");
    setxattr(&src.join("dir/f"), "user.empty", b"");
    setxattr(&src.join("dir"), "user.tag", b"folder");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        setxattr(&src.join("dir/f"), "trusted.t", b"root only");
    }
    let o = import(&src, &fx.cipher, &fx.passfile, &["--json"]);
    assert_code(&o, 0, "import");
    fx.mount();
    assert_eq!(
        getxattr(&fx.p("dir/f"), "user.origin").as_deref(),
        Some(&b"https://example.org/f"[..])
    );
    assert_eq!(
        getxattr(&fx.p("dir/f"), "user.empty").as_deref(),
        Some(&b""[..])
    );
    assert_eq!(
        getxattr(&fx.p("dir"), "user.tag").as_deref(),
        Some(&b"folder"[..])
    );
    fx.unmount();
    let out = fx.scratch.join("out");
    assert_code(&export(&fx.cipher, &out, &fx.passfile, &[]), 0, "export");
    assert_eq!(
        getxattr(&out.join("dir/f"), "user.origin").as_deref(),
        Some(&b"https://example.org/f"[..])
    );
    assert_eq!(
        getxattr(&out.join("dir/f"), "user.empty").as_deref(),
        Some(&b""[..])
    );
    assert_eq!(
        getxattr(&out.join("dir"), "user.tag").as_deref(),
        Some(&b"folder"[..])
    );
    if root {
        assert_eq!(
            getxattr(&out.join("dir/f"), "trusted.t").as_deref(),
            Some(&b"root only"[..])
        );
    }
    let listed = Command::new("getfattr")
        .args(["-d", "-m", "-", "-R"])
        .arg(&out)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.contains(".sealfs."), "{listed}");
    assert_diff_clean(&src, &out);
}

#[test]
fn exit_codes_of_import_and_export() {
    let fx = Fixture::new();
    let src = fx.scratch.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let wrong = fx.scratch.join("wrong");
    fs::write(&wrong, "not the passphrase\n").unwrap();
    assert_code(
        &import(&src, &fx.cipher, &wrong, &[]),
        12,
        "wrong passphrase",
    );
    assert_code(
        &export(&fx.cipher, &fx.scratch.join("o"), &wrong, &[]),
        12,
        "wrong passphrase",
    );
    // A non-empty directory that is not a volume is not touched.
    let junk = fx.scratch.join("junk");
    fs::create_dir_all(&junk).unwrap();
    fs::write(junk.join("keep"), b"mine").unwrap();
    let o = import(&src, &junk, &fx.passfile, &[]);
    assert_code(&o, 23, "not a volume");
    assert!(stderr(&o).contains("not a sealfs volume"), "{}", stderr(&o));
    assert_eq!(fs::read_dir(&junk).unwrap().count(), 1);
    assert_code(
        &export(&junk, &fx.scratch.join("o"), &fx.passfile, &[]),
        23,
        "export from a non-volume",
    );
    // PLAINDIR missing.
    assert_code(
        &import(&fx.scratch.join("nope"), &fx.cipher, &fx.passfile, &[]),
        1,
        "missing PLAINDIR",
    );
    // A file in the volume where the source has a directory: reported, exit 3.
    let src2 = fx.scratch.join("src2");
    fs::create_dir_all(src2.join("f")).unwrap();
    fs::write(src2.join("f/inner"), b"y").unwrap();
    assert_code(&import(&src, &fx.cipher, &fx.passfile, &[]), 0, "import");
    let o = import(&src2, &fx.cipher, &fx.passfile, &["--json"]);
    assert_code(&o, 3, "conflict");
    let r = json_of(&o);
    assert_eq!(r["problems"][0]["path"], "f", "{r}");
    assert_eq!(r["problems"][0]["kind"], "failed", "{r}");
}

/// `script` (util-linux) runs a command on a pseudo-terminal and copies
/// what it draws to stdout.
fn on_a_terminal(args: &[&OsStr]) -> Option<Output> {
    let quote = |a: &OsStr| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''"));
    let cmd: Vec<String> = std::iter::once(OsStr::new(bin()))
        .chain(args.iter().copied())
        .map(quote)
        .collect();
    Command::new("script")
        .args(["-qec", &cmd.join(" "), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .ok()
}

#[test]
fn progress_bar_is_drawn_on_a_terminal_and_never_into_a_pipe() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().canonicalize().unwrap();
    let src = base.join("src");
    fs::create_dir(&src).unwrap();
    // Enough to take several of the bar's 100 ms ticks.
    let block: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..200 {
        fs::write(src.join(format!("f{i:03}")), &block).unwrap();
    }
    let pass = base.join("pass");
    fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();

    let cipher = base.join("tty.enc");
    let Some(o) = on_a_terminal(&import_args(&src, &cipher, &pass, &[])) else {
        eprintln!("SKIP: script (util-linux) is not installed");
        return;
    };
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "import on a terminal failed: {screen}");
    // Frames: the files counter, a bar, byte counts, rate and ETA, each
    // frame drawn over the last (carriage return, erase line).
    assert!(
        screen.contains("files ") && screen.contains("/200 ["),
        "{screen}"
    );
    assert!(
        screen.contains("=") && screen.contains("MiB/s, eta "),
        "{screen}"
    );
    assert!(screen.contains("\r\x1b[2K"), "{screen}");
    assert!(screen.contains("imported 200 files"), "{screen}");
    // The bar fits the terminal: no frame longer than its width (script's
    // terminal is 80 columns when it has none to copy).
    for frame in screen.split(['\r', '\n']) {
        let visible = frame.trim_start_matches("\x1b[2K");
        if visible.contains(" eta ") {
            assert!(
                visible.chars().count() <= 80,
                "frame of {} columns: {visible:?}",
                visible.chars().count()
            );
        }
    }

    // Into a pipe (stderr captured): the summary only, no frames.
    let o = import(&src, &base.join("pipe.enc"), &pass, &[]);
    assert_code(&o, 0, "import into a pipe");
    let err = stderr(&o);
    assert!(
        !err.contains('\r') && !err.contains(" eta ") && !err.contains('\x1b'),
        "{err:?}"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("imported 200 files"),
        "{:?}",
        o
    );
}
