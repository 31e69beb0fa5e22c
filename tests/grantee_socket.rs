//! Issue 21.8: a grantee finds the control socket with `--mount`. The
//! mount's owner made the socket in their own directory; a grantee's
//! `sealfs ctl --mount MNT grant retire TOKEN` finds it from the mount's
//! entry in /proc/mounts (its owner) and the mount point's name.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::*;

/// The `tests` user (contrib/setup.sh creates it), else `nobody`.
fn grantee() -> (u32, u32, &'static str) {
    for name in ["tests", "nobody"] {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: getpwnam with a valid C string; fields copied at once.
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if !pw.is_null() {
            // SAFETY: non-null result of getpwnam.
            return unsafe { ((*pw).pw_uid, (*pw).pw_gid, name) };
        }
    }
    panic!("no 'tests' or 'nobody' user");
}

#[test]
fn a_grantee_retires_a_grant_with_mount() {
    let mut fx = Fixture::new();
    // The grantee must be able to reach the mount point's path.
    std::fs::set_permissions(fx.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    fx.mount_with(&["-o", "allow_other"]);
    let (uid, gid, _) = grantee();
    let by_uid = format!("uid:{uid}");
    let mnt = fx.mnt.to_str().unwrap().to_string();
    let out = Command::new(bin())
        .args([
            "ctl",
            "--mount",
            &mnt,
            "--json",
            "grant",
            "create",
            "--grantee",
            &by_uid,
        ])
        .args(["--ops", "read", "--path-prefix", "/"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = g["grant_token"].as_str().unwrap().to_string();

    // As the grantee: --mount finds the owner's socket.
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
            bin(),
            "ctl",
            "--mount",
            &mnt,
            "grant",
            "retire",
            &token,
        ])
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the grantee's grant retire --mount: {err}"
    );
    let out = Command::new(bin())
        .args(["ctl", "--mount", &mnt, "--json", "grant", "list"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["grants"].as_array().unwrap().len(), 0, "{list}");
    fx.unmount();
}
