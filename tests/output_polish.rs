//! Issue 21.11: output polish. `ctl census` as a table (JSON with
//! `--json`), singular and plural right, `--json` commands print one
//! object on error too, and a non-root mount that cannot open /dev/fuse
//! says so, once.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn census_is_a_table_and_json_with_json() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    std::fs::write(fx.p("a"), b"1").unwrap();
    std::fs::create_dir(fx.p("d")).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&fx.ctl_socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let t = run(&["census"]);
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[0].split_whitespace().collect::<Vec<_>>()
            == ["version", "files", "dirs", "unreadable"],
        "{t}"
    );
    let v1: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(v1[0], "v1", "{t}");
    assert!(v1[1].parse::<u64>().unwrap() >= 1, "{t}");
    assert!(lines.last().unwrap().starts_with("  total"), "{t}");
    assert!(!t.contains('{'), "no JSON in the table: {t}");
    let j: serde_json::Value = serde_json::from_str(&run(&["census", "--json"])).unwrap();
    assert!(j["files"]["1"].as_u64().unwrap() >= 1, "{j}");
    fx.unmount();
}

#[test]
fn one_entry_is_singular() {
    let fx = Fixture::new();
    let plain = fx.scratch.join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("f"), b"x").unwrap();
    // One FIFO: not copied, reported.
    let fifo = std::ffi::CString::new(plain.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let out = sealfs(&[
        "import".as_ref(),
        plain.as_os_str(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("1 entry was not imported"), "{err}");
    assert!(!err.contains("1 entries"), "{err}");
}

#[test]
fn json_commands_print_one_object_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = sealfs(&["info".as_ref(), dir.path().as_os_str(), "--json".as_ref()]);
    assert_eq!(out.status.code(), Some(23));
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(s.lines().count(), 1, "one object: {s:?}");
    let j: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(j["error"]["code"], 23, "{j}");
    assert!(j["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a sealfs volume"));
}

#[test]
fn a_non_root_mount_names_dev_fuse_once() {
    // Only where /dev/fuse is closed to other users (as here: 0600).
    let mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode();
    if mode & 0o006 == 0o006 {
        println!("/dev/fuse is open to everyone here: nothing to check");
        return;
    }
    let (uid, gid) = (65534u32, 65534u32); // nobody
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = dir.path().join("v");
    std::fs::create_dir(&base).unwrap();
    std::os::unix::fs::chown(&base, Some(uid), Some(gid)).unwrap();
    let as_nobody = |args: &[&OsStr]| {
        Command::new("setpriv")
            .args([format!("--reuid={uid}"), format!("--regid={gid}")])
            .arg("--clear-groups")
            .arg(bin())
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let pass = base.join("pass");
    let cipher = base.join("c");
    let mnt = base.join("m");
    std::fs::write(&pass, "pw\n").unwrap();
    std::os::unix::fs::chown(&pass, Some(uid), Some(gid)).unwrap();
    let out = as_nobody(&[
        "init".as_ref(),
        cipher.as_os_str(),
        "--kdf-memory-kib".as_ref(),
        "8192".as_ref(),
        "--kdf-iterations".as_ref(),
        "1".as_ref(),
        "--passfile".as_ref(),
        pass.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir(&mnt).unwrap();
    std::os::unix::fs::chown(&mnt, Some(uid), Some(gid)).unwrap();
    let out = as_nobody(&[
        "mount".as_ref(),
        cipher.as_os_str(),
        mnt.as_os_str(),
        "--passfile".as_ref(),
        pass.as_os_str(),
        "--log-file".as_ref(),
        base.join("log").as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    let guard = Mounted::adopt_daemon(&cipher, &mnt, &base.join("log"));
    assert!(!out.status.success(), "a non-root mount worked: {err}");
    assert!(err.contains("/dev/fuse"), "the cause is hidden: {err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("sealfs: ") && !l.starts_with("sealfs: warning"))
        .collect();
    assert_eq!(errors.len(), 1, "printed once: {err}");
    assert_eq!(err.matches("Permission denied").count(), 1, "{err}");
    drop(guard);
}
