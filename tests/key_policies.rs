//! Issue 22 parts 3 and 4: key policies decide both control-socket and
//! FUSE requests, and separate the duties of a key administrator (another
//! uid: rotates, disables and re-enables `finance` over the socket, but
//! reading `/finance` through the mount gets EACCES) from those of a key
//! user (reads and writes `/finance`, cannot rotate or disable); the owner
//! gives and takes both roles. A policy that locks every administrator out
//! is refused. Other users run through `setpriv` (real uids, real
//! syscalls through the kernel's FUSE).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use common::*;

const ADMIN: u32 = 41001;
const USER: u32 = 41002;

/// Runs `args` as `uid` (group `uid`, no supplementary groups).
fn as_uid(uid: u32, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
        ])
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ctl_as(fx: &Fixture, uid: u32, args: &[&str]) -> Output {
    let sock = fx.ctl_socket.to_str().unwrap().to_string();
    let mut all = vec![bin(), "ctl", "--socket", &sock];
    all.extend_from_slice(args);
    as_uid(uid, &all)
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output, what: &str) -> String {
    assert!(!o.status.success(), "{what} was allowed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn set_policy(fx: &Fixture, policy: &str) -> Output {
    let f = fx.scratch.join("policy.json");
    fs::write(&f, policy).unwrap();
    fx.ctl_output(&[
        "--key",
        "finance",
        "key",
        "policy",
        "set",
        f.to_str().unwrap(),
    ])
}

fn policy(admin_actions: &str, user_actions: &str) -> String {
    format!(
        r#"{{"version": 1, "statements": [
            {{"principals": ["uid:0"], "actions": ["*"]}},
            {{"principals": ["uid:{ADMIN}"], "actions": [{admin_actions}]}},
            {{"principals": ["uid:{USER}"], "actions": [{user_actions}], "path_prefix": "/finance"}}]}}"#
    )
}

#[test]
fn an_administrator_who_cannot_read_and_a_user_who_cannot_administer() {
    let mut fx = Fixture::new();
    // Other users must reach the mount point and the socket.
    fs::set_permissions(fx.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fx.mount_ctl_with(&["-o", "allow_other"]);
    fx.ctl_ok(&["key", "create", "--alias", "finance"]);
    fs::create_dir(fx.p("finance")).unwrap();
    fs::set_permissions(fx.p("finance"), fs::Permissions::from_mode(0o777)).unwrap();
    fx.ctl_ok(&["key", "assign", "/finance", "finance"]);
    fx.ctl_ok(&["rewrap", "--path", "/finance"]);
    fs::write(fx.p("finance/ledger"), b"ledger").unwrap();
    // Made after the assignment: its record is wrapped by finance.
    fs::create_dir(fx.p("finance/books")).unwrap();
    fs::set_permissions(fx.p("finance/books"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(fx.p("finance/ledger"), fs::Permissions::from_mode(0o666)).unwrap();
    fs::write(fx.p("public"), b"public").unwrap();
    fs::set_permissions(fx.p("public"), fs::Permissions::from_mode(0o644)).unwrap();
    let ledger = fx.p("finance/ledger").to_str().unwrap().to_string();
    let public = fx.p("public").to_str().unwrap().to_string();
    let newfile = fx.p("finance/by-user").to_str().unwrap().to_string();
    // Both may reach the paths (grants): what separates them is the key policy.
    for uid in [ADMIN, USER] {
        fx.ctl_ok(&[
            "grant",
            "create",
            "--grantee",
            &format!("uid:{uid}"),
            "--ops",
            "all",
            "--path-prefix",
            "/",
        ]);
    }

    // Without a policy: the owner administers; others may not.
    let e = refused(
        &ctl_as(&fx, ADMIN, &["--key", "finance", "rotate"]),
        "rotate without policy",
    );
    assert!(e.contains("forbidden"), "{e}");
    // And grants alone decide use: both read.
    ok(
        &as_uid(ADMIN, &["cat", &ledger]),
        "admin reads before the policy",
    );

    // Lockout safety: nobody would keep admin:policy.
    let o = set_policy(
        &fx,
        &format!(
            r#"{{"version":1,"statements":[{{"principals":["uid:{ADMIN}"],"actions":["admin:rotate"]}}]}}"#
        ),
    );
    let e = refused(&o, "a lockout policy");
    assert!(e.contains("lockout"), "{e}");
    let o = set_policy(
        &fx,
        r#"{"version":1,"statements":[{"principals":["nosuchuser"],"actions":["*"]}]}"#,
    );
    assert!(refused(&o, "unknown user").contains("nosuchuser"));

    // The owner gives the two roles.
    let out = ok(
        &set_policy(
            &fx,
            &policy(
                r#""admin:rotate", "admin:disable", "admin:enable""#,
                r#""use:read", "use:write""#,
            ),
        ),
        "set policy",
    );
    assert!(out.contains("sha256"), "{out}");
    let stored = fx.ctl_ok(&["--key", "finance", "key", "policy", "get"]);
    assert!(stored.contains(&format!("uid:{ADMIN}")), "{stored}");

    // The administrator rotates, disables and re-enables over the socket...
    let r = ok(
        &ctl_as(&fx, ADMIN, &["--json", "--key", "finance", "rotate"]),
        "admin rotates",
    );
    assert!(r.contains("primary"), "{r}");
    ok(
        &ctl_as(&fx, ADMIN, &["--key", "finance", "disable"]),
        "admin disables",
    );
    assert_eq!(
        ok(&as_uid(USER, &["cat", &public]), "others' keys work on"),
        "public"
    );
    let e = refused(&as_uid(USER, &["cat", &ledger]), "read while disabled");
    assert!(e.contains("Permission denied"), "{e}");
    ok(
        &ctl_as(&fx, ADMIN, &["--key", "finance", "enable"]),
        "admin enables",
    );
    // ... but may not read finance data, nor change the policy, nor touch
    // the default key or the volume.
    let e = refused(&as_uid(ADMIN, &["cat", &ledger]), "admin reads finance");
    assert!(e.contains("Permission denied"), "{e}");
    let e = refused(
        &as_uid(ADMIN, &["ls", fx.p("finance/books").to_str().unwrap()]),
        "admin lists a finance directory",
    );
    assert!(e.contains("Permission denied"), "{e}");
    assert_eq!(
        ok(&as_uid(ADMIN, &["cat", &public]), "admin reads public"),
        "public"
    );
    refused(
        &ctl_as(
            &fx,
            ADMIN,
            &["--key", "finance", "key", "policy", "set", "none"],
        ),
        "admin sets policy",
    );
    refused(
        &ctl_as(&fx, ADMIN, &["rotate"]),
        "admin rotates the default key",
    );
    refused(
        &ctl_as(&fx, ADMIN, &["disable"]),
        "admin disables the volume",
    );
    refused(&ctl_as(&fx, ADMIN, &["status"]), "admin reads status");

    // The user reads and writes finance, but administers nothing.
    assert_eq!(ok(&as_uid(USER, &["cat", &ledger]), "user reads"), "ledger");
    ok(
        &as_uid(USER, &["sh", "-c", &format!("echo written > {newfile}")]),
        "user writes",
    );
    assert_eq!(fs::read(&newfile).unwrap(), b"written\n");
    for args in [
        vec!["--key", "finance", "rotate"],
        vec!["--key", "finance", "disable"],
        vec!["--key", "finance", "key", "policy", "get"],
    ] {
        let e = refused(&ctl_as(&fx, USER, &args), "user administers");
        assert!(e.contains("forbidden"), "{args:?}: {e}");
    }

    // The owner takes both roles away (and gives the admin read).
    ok(
        &set_policy(&fx, &policy(r#""use:read""#, r#""admin:enable""#)),
        "swap roles",
    );
    refused(
        &ctl_as(&fx, ADMIN, &["--key", "finance", "rotate"]),
        "admin after removal",
    );
    assert_eq!(
        ok(&as_uid(ADMIN, &["cat", &ledger]), "admin reads now"),
        "ledger"
    );
    refused(&as_uid(USER, &["cat", &ledger]), "user after removal");
    ok(
        &ctl_as(&fx, USER, &["--key", "finance", "enable"]),
        "user may enable now",
    );

    // Every policy change is audited with both hashes; denials too.
    let audit = fx.ctl_ok(&["audit", "export"]);
    assert!(audit.contains("set_key_policy"), "{audit}");
    assert!(audit.contains("policy sha256 none ->"), "{audit}");
    assert!(audit.contains("does not allow"), "{audit}");

    // Policies survive a remount (they are in the keyring).
    fx.unmount();
    fx.mount_ctl_with(&["-o", "allow_other"]);
    let e = refused(&as_uid(USER, &["cat", &ledger]), "user after remount");
    assert!(e.contains("Permission denied"), "{e}");
    assert_eq!(
        ok(&as_uid(ADMIN, &["cat", &ledger]), "admin after remount"),
        "ledger"
    );
    // Cleared: back to owner-administers, grants-decide-use.
    fx.ctl_ok(&["--key", "finance", "key", "policy", "set", "none"]);
    assert_eq!(
        ok(&as_uid(USER, &["cat", &ledger]), "user after clear"),
        "ledger"
    );
    fx.unmount();
}
