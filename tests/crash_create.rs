//! A crash inside `create`: the daemon is SIGKILLed after the new file's
//! backing entry exists but before its header is written (kill point
//! `file-entry-made`). No name may be left that does not open: after the
//! crash the new name is either absent (the create never happened) or a
//! whole, empty, readable file; fsck is clean; the name can be created
//! again; nothing else in the directory changed.
//!
//! Before the fix (crash_fulldisk's rare "open fNN: EIO") the kill left a
//! 0-byte backing file under the new name: listed, but every stat/open
//! failed with EIO ("ciphertext truncated").

mod common;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;

use common::*;

fn names(fx: &Fixture, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(fx.p(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The new name `name` in `dir` after the kill: absent, or an empty file
/// that opens and reads.
fn absent_or_whole(fx: &Fixture, rel: &str, what: &str) {
    match fs::metadata(fx.p(rel)) {
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOENT),
            "{what}: stat {rel} after the crash: {e}"
        ),
        Ok(m) => {
            assert_eq!(m.len(), 0, "{what}: {rel} has bytes no write gave it");
            assert_eq!(
                fs::read(fx.p(rel)).unwrap_or_else(|e| panic!("{what}: read {rel}: {e}")),
                b""
            );
        }
    }
}

#[test]
fn a_crash_between_the_new_entry_and_its_header_leaves_no_unreadable_name() {
    type Op = fn(&std::path::Path);
    let cases: [(&str, Op); 3] = [
        ("open(O_CREAT)", |m| drop(fs::write(m.join("d/new"), b"x"))),
        ("open(O_CREAT|O_EXCL)", |m| {
            drop(
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o640)
                    .open(m.join("d/new")),
            )
        }),
        ("mknod(S_IFREG)", |m| {
            let p = std::ffi::CString::new(m.join("d/new").into_os_string().into_encoded_bytes())
                .unwrap();
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::mknod(p.as_ptr(), libc::S_IFREG | 0o600, 0) };
        }),
    ];
    for (what, op) in cases {
        let mut fx = Fixture::mounted();
        fs::create_dir(fx.p("d")).unwrap();
        fs::write(fx.p("d/kept"), b"kept").unwrap();
        fx.unmount();
        fx.run_to_kill_point("file-entry-made", what, op);
        fx.assert_fsck_clean(what);
        fx.mount();
        absent_or_whole(&fx, "d/new", what);
        let listed = names(&fx, "d");
        assert!(
            listed == ["kept"] || listed == ["kept", "new"],
            "{what}: the directory lists {listed:?}"
        );
        assert_eq!(fs::read(fx.p("d/kept")).unwrap(), b"kept", "{what}");
        // The interrupted create can simply be redone.
        fs::write(fx.p("d/new"), b"again").unwrap_or_else(|e| panic!("{what}: create again: {e}"));
        fx.remount();
        assert_eq!(fs::read(fx.p("d/new")).unwrap(), b"again", "{what}");
        assert_eq!(names(&fx, "d"), ["kept", "new"], "{what}");
        fx.unmount();
        fx.assert_fsck_clean(what);
    }
}

/// A header-less empty backing file can still come from a power loss (the
/// name reached the disk, the header did not) or a backing filesystem
/// without `O_TMPFILE`: fsck names it, salvage removes it (and a long
/// name's sidecar), and the name can be used again.
#[test]
fn fsck_reports_an_empty_headerless_file_and_salvage_removes_it() {
    let mut fx = Fixture::mounted();
    fs::write(fx.p("kept"), b"kept").unwrap();
    let long = "L".repeat(200);
    let mut cut = Vec::new();
    for rel in ["short", long.as_str()] {
        let made = fx.new_backing_files(|fx| fs::write(fx.p(rel), b"data").unwrap());
        let entry = made
            .into_iter()
            .find(|p| fs::metadata(p).unwrap().len() >= 4096)
            .expect("the new file's backing entry");
        cut.push(entry);
    }
    fx.unmount();
    for p in &cut {
        fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(0)
            .unwrap();
    }
    let (code, report) = fx.fsck_json(&[]);
    assert_ne!(code, Some(0), "fsck passed a header-less file: {report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{report}");
    for p in problems {
        assert!(
            p["message"]
                .as_str()
                .unwrap()
                .contains("a create cut by a crash"),
            "{p}"
        );
    }
    let (code, report) = fx.fsck_json(&["--salvage"]);
    // 1: problems found, all repaired.
    assert_eq!(code, Some(1), "salvage: {report}");
    for p in report["problems"].as_array().unwrap() {
        assert_eq!(p["repair"], "repaired", "{p}");
    }
    for p in &cut {
        assert!(!p.exists(), "{} is still there", p.display());
    }
    fx.assert_fsck_clean("after salvage");
    fx.mount();
    assert_eq!(names(&fx, "."), ["kept"]);
    fs::write(fx.p(&long), b"again").unwrap();
    assert_eq!(fs::read(fx.p(&long)).unwrap(), b"again");
    fx.unmount();
    fx.assert_fsck_clean("after the name was used again");
}
