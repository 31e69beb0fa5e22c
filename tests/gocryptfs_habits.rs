//! Issue 21.10: what a gocryptfs user does first works. A passphrase piped
//! on stdin is read (init, mount, info); `-passfile` with one dash names
//! `--passfile`; grantees by user and group names; a host path given as
//! `--path-prefix` warns.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;

fn piped(args: &[&std::ffi::OsStr], stdin: &str) -> Output {
    let mut c = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn a_passphrase_piped_on_stdin_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let cipher = dir.path().join("c");
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let mut init: Vec<&std::ffi::OsStr> = vec!["init".as_ref(), cipher.as_os_str()];
    init.extend(FAST_KDF.iter().map(std::ffi::OsStr::new));
    let out = piped(&init, "piped pw\n");
    assert!(
        out.status.success(),
        "echo pw | sealfs init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // echo pw | sealfs mount C M
    let out = piped(
        &["mount".as_ref(), cipher.as_os_str(), mnt.as_os_str()],
        "piped pw\n",
    );
    let guard = Mounted::adopt_daemon(&cipher, &mnt, &dir.path().join("none"));
    assert!(
        out.status.success(),
        "echo pw | sealfs mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(mnt.join("f"), b"x").unwrap();
    drop(guard);
    // A wrong one is a wrong passphrase (12); nothing on stdin says what to do.
    let out = piped(&["info".as_ref(), cipher.as_os_str()], "nope\n");
    assert_eq!(out.status.code(), Some(12));
    let out = piped(&["info".as_ref(), cipher.as_os_str()], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--passfile") && err.contains("stdin"), "{err}");
    let out = piped(&["info".as_ref(), cipher.as_os_str()], "piped pw");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn one_dash_long_options_name_the_two_dash_spelling() {
    let out = sealfs(&[
        "mount".as_ref(),
        "c".as_ref(),
        "m".as_ref(),
        "-passfile".as_ref(),
        "pw".as_ref(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("'--passfile'"), "{err}");
    assert!(!err.contains("tip:"), "no clap tip about '-p': {err}");
    // Values that merely start with a dash are left to clap.
    let out = sealfs(&["info".as_ref(), "-x".as_ref()]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("one dash"));
}

#[test]
fn grantees_by_name_and_host_paths_warn() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    std::fs::create_dir(fx.p("projects")).unwrap();
    let create = |grantee: &str, prefix: &str| {
        Command::new(bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&fx.ctl_socket)
            .args(["--json", "grant", "create", "--grantee", grantee])
            .args(["--ops", "read", "--path-prefix", prefix])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let grantee_of = |out: &Output| -> String {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["grantee"].as_str().unwrap().to_string()
    };
    let out = create("nobody", "/projects");
    assert_eq!(grantee_of(&out), "uid:65534");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(grantee_of(&create("user:nobody", "/projects")), "uid:65534");
    assert_eq!(grantee_of(&create("group:staff", "/projects")), "gid:50");
    assert_eq!(grantee_of(&create("uid:1001", "/projects")), "uid:1001");
    let out = create("no-such-user-here", "/projects");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user named"));

    // The host path of a directory in the mount.
    let host = fx.p("projects");
    let out = create("nobody", host.to_str().unwrap());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    grantee_of(&out);
    assert!(
        err.contains("warning") && err.contains("path on the host") && err.contains("/projects?"),
        "{err}"
    );
    let out = create("nobody", "/home/someone/projects");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    grantee_of(&out);
    assert!(err.contains("names nothing inside the volume"), "{err}");
    fx.unmount();
}
