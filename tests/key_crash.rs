//! Issue 22: a mounted daemon SIGKILLed at every step of a named-key change
//! (key create, key assign, key policy set) leaves a volume that mounts
//! again with the old or the new state, never a mix and never a false
//! rollback alarm. The daemon kills itself at a kill point
//! (`SEALFS_TEST_KILL_POINT`, see `sealfs::keyring::kill_point`), only
//! inside the change named by `SEALFS_TEST_KILL_OP`.

mod common;

use std::fs;
use std::time::Duration;

use serde_json::Value;

use common::*;

const STORE_POINTS: [&str; 3] = [
    "keyring-change-recorded",
    "keyring-primary-written",
    "keyring-stored",
];

fn key_list(fx: &Fixture) -> Value {
    serde_json::from_str(&fx.ctl_ok(&["--json", "key", "list"])).unwrap()
}

/// Mounts with the kill point armed for `op`, runs `args` (the daemon dies
/// answering it), and cleans the dead mount up.
fn killed_during(fx: &mut Fixture, op: &str, point: &str, args: &[&str]) {
    let sock = fx.ctl_socket.to_str().unwrap().to_string();
    let log = fx.root.path().join(format!("killed-{op}-{point}.log"));
    fx.mounted = Some(Mounted::start_env(
        &fx.cipher,
        &fx.mnt,
        &["--passfile".as_ref(), fx.passfile.as_os_str()],
        &["--ctl-socket", &sock],
        &[
            ("SEALFS_TEST_KILL_POINT", point),
            ("SEALFS_TEST_KILL_OP", op),
        ],
        &log,
    ));
    fx.wait_ctl_socket();
    let out = fx.ctl_output(args);
    assert!(!out.status.success(), "{op} at {point} was not interrupted");
    assert!(
        wait_until(Duration::from_secs(10), || !fx.daemon_alive()),
        "the daemon did not die at {point}"
    );
    fx.kill_daemon();
}

#[test]
fn a_crash_during_key_create_assign_or_policy_set_leaves_old_or_new() {
    for point in STORE_POINTS {
        let mut fx = Fixture::new();
        fx.mount_ctl();
        fs::create_dir(fx.p("finance")).unwrap();
        fs::write(fx.p("finance/a"), b"a").unwrap();
        fx.ctl_ok(&["key", "create", "--alias", "base"]);
        fx.unmount();

        // key create
        killed_during(
            &mut fx,
            "create_key",
            point,
            &["key", "create", "--alias", "finance"],
        );
        fx.mount_ctl();
        let keys = key_list(&fx)["keys"].as_array().unwrap().len();
        assert!(keys == 2 || keys == 3, "{point}: {keys} keys");
        // The volume works, and the interrupted change can simply be redone.
        assert_eq!(fs::read(fx.p("finance/a")).unwrap(), b"a");
        if keys == 2 {
            fx.ctl_ok(&["key", "create", "--alias", "finance"]);
        }
        fx.unmount();

        // key assign
        killed_during(
            &mut fx,
            "assign_key",
            point,
            &["key", "assign", "/finance", "finance"],
        );
        fx.mount_ctl();
        let assigned = key_list(&fx)["assignments"].as_array().unwrap().len();
        assert!(assigned <= 1, "{point}: {assigned}");
        if assigned == 0 {
            fx.ctl_ok(&["key", "assign", "/finance", "finance"]);
        }
        fs::write(fx.p("finance/b"), b"b").unwrap();
        assert_eq!(fs::read(fx.p("finance/b")).unwrap(), b"b");
        fx.unmount();

        // key policy set
        let policy = fx.scratch.join("p.json");
        fs::write(
            &policy,
            r#"{"version":1,"statements":[{"principals":["uid:0"],"actions":["*"]}]}"#,
        )
        .unwrap();
        killed_during(
            &mut fx,
            "set_key_policy",
            point,
            &[
                "--key",
                "finance",
                "key",
                "policy",
                "set",
                policy.to_str().unwrap(),
            ],
        );
        fx.mount_ctl();
        let got: Value = serde_json::from_str(
            &fx.ctl_ok(&["--json", "--key", "finance", "key", "policy", "get"]),
        )
        .unwrap();
        match &got["policy"] {
            Value::Null => {}
            Value::String(p) => assert!(p.contains("uid:0"), "{point}: {p}"),
            other => panic!("{point}: {other}"),
        }
        assert_eq!(fs::read(fx.p("finance/b")).unwrap(), b"b");
        let v = fx.ctl_ok(&["audit", "verify"]);
        assert!(!v.contains("rollback"), "{point}: {v}");
        fx.unmount();
    }
}
