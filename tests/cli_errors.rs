//! Issue 21.9: errors that say what to do. Which keyring file is damaged
//! or missing and what repairs it, the line of a corrupt `sealfs.toml`, a
//! second volume onto a mount point (exit 10, printed once), `unmount` of
//! what is not mounted or not sealfs, a log file that cannot be opened, a
//! missing syslog socket, and no colour codes on a non-terminal stderr.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::process::{Command, Stdio};

use common::*;

fn stderr_of(args: &[&OsStr]) -> (Option<i32>, String) {
    let out = sealfs(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lines sealfs printed as errors (warnings aside).
fn error_lines(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| l.starts_with("sealfs: ") && !l.starts_with("sealfs: warning"))
        .collect()
}

#[test]
fn damaged_keyring_and_config_name_the_file_and_the_repair() {
    let fx = Fixture::new();
    let info = |fx: &Fixture| {
        stderr_of(&[
            "info".as_ref(),
            fx.cipher.as_os_str(),
            "--passfile".as_ref(),
            fx.passfile.as_os_str(),
        ])
    };
    let keyring = fx.cipher.join("sealfs.keyring");
    let backup = fx.cipher.join("sealfs.keyring.bak");
    let saved = (fs::read(&keyring).unwrap(), fs::read(&backup).unwrap());

    // Truncated (both copies).
    fs::write(&keyring, &saved.0[..40]).unwrap();
    fs::write(&backup, &saved.1[..40]).unwrap();
    let (code, err) = info(&fx);
    assert_eq!(code, Some(23), "{err}");
    assert!(err.contains(&keyring.display().to_string()), "{err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(err.contains("--salvage"), "{err}");

    // Missing.
    fs::remove_file(&keyring).unwrap();
    fs::remove_file(&backup).unwrap();
    let (code, err) = info(&fx);
    assert_eq!(code, Some(23), "{err}");
    assert!(
        err.contains(&keyring.display().to_string()) && err.contains("missing"),
        "{err}"
    );
    assert!(err.contains("backup"), "{err}");
    fs::write(&keyring, &saved.0).unwrap();
    fs::write(&backup, &saved.1).unwrap();

    // A corrupt sealfs.toml: the line and the repair.
    let toml = fx.cipher.join("sealfs.toml");
    let text = fs::read_to_string(&toml).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "garbage = = 1";
    fs::write(&toml, lines.join("\n")).unwrap();
    let (code, err) = info(&fx);
    assert_eq!(code, Some(23), "{err}");
    assert!(err.contains("sealfs.toml line 3"), "{err}");
    assert!(
        err.contains(&format!("sealfs fsck {} --salvage", fx.cipher.display())),
        "{err}"
    );
    assert_eq!(error_lines(&err).len(), 1, "{err}");
}

#[test]
fn a_second_volume_onto_a_mount_point_exits_10_once() {
    let mut fx = Fixture::mounted();
    let other = Fixture::new();
    let (code, err) = stderr_of(&[
        "mount".as_ref(),
        other.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "--passfile".as_ref(),
        other.passfile.as_os_str(),
    ]);
    assert_eq!(code, Some(10), "{err}");
    assert_eq!(error_lines(&err).len(), 1, "printed once: {err}");
    assert!(err.contains("already a sealfs mount"), "{err}");
    // Still exactly one mount there, the first one, serving.
    let n = mount_points().iter().filter(|m| **m == fx.mnt).count();
    assert_eq!(n, 1);
    fs::write(fx.p("still"), b"here").unwrap();
    fx.unmount();
}

#[test]
fn unmount_refuses_what_is_not_a_sealfs_mount() {
    let fx = Fixture::new();
    let (code, err) = stderr_of(&["unmount".as_ref(), fx.mnt.as_os_str()]);
    assert_eq!(code, Some(10), "{err}");
    assert!(err.contains("is not mounted"), "{err}");
    assert!(!err.contains("fusermount"), "our own message: {err}");

    // A tmpfs stands in for another filesystem (a gocryptfs mount).
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "other"])
        .arg(&fx.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let (code, err) = stderr_of(&["unmount".as_ref(), fx.mnt.as_os_str()]);
    let still = is_mounted(&fx.mnt);
    let _ = Command::new("umount").arg(&fx.mnt).status();
    assert_eq!(code, Some(10), "{err}");
    assert!(
        err.contains("not a sealfs one") && err.contains("tmpfs"),
        "{err}"
    );
    assert!(still, "sealfs unmount unmounted a non-sealfs mount");
}

#[test]
fn log_targets_are_checked_before_the_mount() {
    let fx = Fixture::new();
    let (code, err) = stderr_of(&[
        "mount".as_ref(),
        fx.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
        "--log-file".as_ref(),
        "/nonexistent/dir/x.log".as_ref(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent/dir/x.log"), "{err}");
    assert!(!is_mounted(&fx.mnt));

    // No syslog socket: a warning on stderr before the daemon detaches.
    let out = Command::new(bin())
        .arg("mount")
        .arg(&fx.cipher)
        .arg(&fx.mnt)
        .arg("--passfile")
        .arg(&fx.passfile)
        .env("SEALFS_SYSLOG_SOCKET", fx.scratch.join("no-such-socket"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &fx.scratch.join("none"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: no syslog socket") && err.contains("--log-file"),
        "{err}"
    );
    drop(guard);
}

#[test]
fn no_colour_codes_on_a_non_terminal_stderr() {
    let fx = Fixture::new();
    let log = fx.scratch.join("fg.log");
    // A foreground mount logging at info level to a file (as the journal
    // captures a unit's stderr).
    let mut child = Command::new(bin())
        .arg("mount")
        .arg(&fx.cipher)
        .arg(&fx.mnt)
        .arg("--passfile")
        .arg(&fx.passfile)
        .arg("-f")
        .env("SEALFS_LOG", "info")
        .stdin(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &log);
    assert!(wait_until(TIMEOUT, || is_mounted(&fx.mnt)));
    drop(guard);
    assert!(wait_until(TIMEOUT, || matches!(
        child.try_wait(),
        Ok(Some(_))
    )));
    let err = fs::read_to_string(&log).unwrap();
    assert!(err.contains("INFO"), "info logging printed nothing: {err}");
    assert!(!err.contains('\u{1b}'), "ANSI codes on a file: {err:?}");
}
