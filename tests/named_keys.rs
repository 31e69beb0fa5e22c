//! Issue 22 on live mounts: several named keys with aliases, keys by
//! subtree, per-key rotation, disable and deletion isolation, and imported
//! key material (BYOK) with an expiry.
//!
//! Which key wraps what is read back through `census --by-key` (a full
//! scan of the cipher dir that opens every header), and what a key's state
//! does is seen through the mount with real syscalls.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

fn json(fx: &Fixture, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&fx.ctl_ok(&all)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// `(files, dirs)` per key alias (each alias of a key), from `census --by-key`.
fn by_key(fx: &Fixture) -> std::collections::BTreeMap<String, (u64, u64)> {
    json(fx, &["census", "--by-key"])
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let counts = (r["files"].as_u64().unwrap(), r["dirs"].as_u64().unwrap());
            r["aliases"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |a| (a.as_str().unwrap().to_string(), counts))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn key_entry(fx: &Fixture, alias: &str) -> Value {
    json(fx, &["key", "list"])["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["aliases"].as_array().unwrap().iter().any(|a| a == alias))
        .unwrap_or_else(|| panic!("no key {alias}"))
        .clone()
}

fn read(p: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn keys_aliases_and_a_disabled_key_stops_exactly_its_entries() {
    let mut fx = Fixture::new();
    fx.mount_ctl();

    // One key at first: the default key, alias `default`.
    let l = json(&fx, &["key", "list"]);
    assert_eq!(l["keys"].as_array().unwrap().len(), 1);
    assert_eq!(l["keys"][0]["aliases"][0], "default");
    assert_eq!(l["keys"][0]["default"], true);

    // create prints the id.
    let id = fx.ctl_ok(&[
        "key",
        "create",
        "--alias",
        "finance",
        "--rotation-period",
        "90d",
        "--description",
        "ledgers",
    ]);
    assert_eq!(id.trim(), "2");
    let fin = key_entry(&fx, "finance");
    assert_eq!(fin["rotation_period"], "90d");
    assert_eq!(fin["origin"], "generated");
    assert_eq!(fin["state"], "enabled");
    assert_eq!(fin["description"], "ledgers");
    // Version numbers are global: key 2's first version is 2.
    assert_eq!(fin["primary"], 2);
    // status lists the keys; metrics carry their id and alias.
    let st = json(&fx, &["status"]);
    assert_eq!(st["keys"].as_array().unwrap().len(), 2, "{st}");
    let m = fx.ctl_ok(&["metrics"]);
    assert!(
        m.lines().any(|l| l.starts_with("sealfs_named_key_info{")
            && l.ends_with(r#"key="2",alias="finance",state="enabled",primary="2"} 1"#)),
        "{m}"
    );

    // Aliases: unique, valid, never the last one.
    for bad in [
        vec!["key", "create", "--alias", "finance"],
        vec!["key", "create", "--alias", "42"],
        vec!["key", "create", "--alias", "a b"],
        vec!["--key", "finance", "key", "alias", "add", "default"],
        vec!["--key", "finance", "key", "alias", "remove", "finance"],
        vec!["key", "alias", "remove", "default"],
        vec!["--key", "nosuch", "rotate"],
    ] {
        let out = fx.ctl_output(&bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?} was accepted");
        assert!(!out.stderr.is_empty());
    }
    fx.ctl_ok(&["--key", "finance", "key", "alias", "add", "ledgers"]);
    fx.ctl_ok(&["--key", "ledgers", "key", "alias", "remove", "finance"]);
    fx.ctl_ok(&["--key", "2", "key", "alias", "add", "finance"]);
    assert_eq!(
        key_entry(&fx, "finance")["aliases"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    fs::create_dir(fx.p("finance")).unwrap();
    fs::create_dir(fx.p("other")).unwrap();
    fx.ctl_ok(&["key", "assign", "/finance", "finance"]);
    fs::write(fx.p("finance/a"), b"ledger").unwrap();
    fs::create_dir(fx.p("finance/q1")).unwrap();
    fs::write(fx.p("finance/q1/b"), b"q1 ledger").unwrap();
    fs::write(fx.p("other/c"), b"other").unwrap();
    let census = by_key(&fx);
    // Under finance: a, q1/b (files) and q1 (dir); /finance's own record
    // was made before the assignment.
    assert_eq!(census["finance"], (2, 1), "{census:?}");
    assert_eq!(census["default"], (1, 3), "{census:?}");

    // Per-key rotation: finance's primary moves, the default key's does not.
    let default_primary = key_entry(&fx, "default")["primary"].clone();
    let r = json(&fx, &["--key", "finance", "rotate"]);
    assert_eq!(r["primary"], 3);
    assert_eq!(key_entry(&fx, "default")["primary"], default_primary);
    assert_eq!(key_entry(&fx, "finance")["primary"], 3);
    // Versions of another key are refused under --key.
    let out = fx.ctl_output(&["--key", "finance", "untrim", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to key 1"));

    // An open handle of a finance file, from before the disable.
    let mut held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.p("finance/a"))
        .unwrap();
    let mut other_held = File::open(fx.p("other/c")).unwrap();

    fx.ctl_ok(&["--key", "finance", "disable"]);
    assert_eq!(key_entry(&fx, "finance")["state"], "disabled");
    assert_errno(read(&fx.p("finance/a")), libc::EACCES, "read finance/a");
    assert_errno(
        read(&fx.p("finance/q1/b")),
        libc::EACCES,
        "read finance/q1/b",
    );
    assert_errno(
        fs::write(fx.p("finance/new"), b"x"),
        libc::EACCES,
        "create in /finance",
    );
    let mut buf = [0u8; 6];
    assert_errno(
        std::os::unix::fs::FileExt::read_at(&held, &mut buf, 0),
        libc::EACCES,
        "read through a handle opened before the disable",
    );
    assert_errno(
        held.write_all(b"more").and_then(|_| held.sync_all()),
        libc::EACCES,
        "write through a handle opened before the disable",
    );
    // Everything else works on.
    assert_eq!(read(&fx.p("other/c")).unwrap(), b"other");
    let mut s = String::new();
    other_held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "other");
    fs::write(fx.p("other/d"), b"new").unwrap();
    fs::write(fx.p("top"), b"top").unwrap();
    assert_eq!(read(&fx.p("top")).unwrap(), b"top");
    // The volume-wide status is not disabled.
    assert_eq!(json(&fx, &["status"])["disabled"], false);

    // Survives a remount (the state is in the keyring).
    drop(held);
    drop(other_held);
    fx.remount_ctl();
    assert_errno(read(&fx.p("finance/a")), libc::EACCES, "after remount");
    assert_eq!(read(&fx.p("other/d")).unwrap(), b"new");

    fx.ctl_ok(&["--key", "finance", "enable"]);
    assert_eq!(read(&fx.p("finance/a")).unwrap(), b"ledger");
    assert_eq!(read(&fx.p("finance/q1/b")).unwrap(), b"q1 ledger");
    fs::write(fx.p("finance/new"), b"x").unwrap();

    // rewrap --key finance moves finance's entries to its primary (v3),
    // and touches no other key's.
    fx.ctl_ok(&["--key", "finance", "rewrap"]);
    let c = json(&fx, &["census"]);
    assert!(c["files"].get("2").is_none(), "{c}");
    assert_eq!(c["files"]["3"], 3, "{c}");
    assert_eq!(c["dirs"]["3"], 1, "{c}");

    // The audit log names the key of each change.
    let audit = fx.ctl_ok(&["audit", "export"]);
    assert!(
        audit.contains("key 2 (finance)") || audit.contains("key 2 (ledgers)"),
        "{audit}"
    );
    fx.unmount();
}

#[test]
fn assignment_is_inherited_kept_by_moves_and_applied_by_rewrap_path() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::create_dir_all(fx.p("hr/old")).unwrap();
    fs::write(fx.p("hr/old/before"), b"before").unwrap();
    fs::create_dir(fx.p("elsewhere")).unwrap();
    fx.ctl_ok(&["key", "create", "--alias", "hr"]);
    fx.ctl_ok(&["key", "assign", "/hr", "hr"]);

    // New entries at any depth below /hr get hr; existing ones keep theirs.
    fs::create_dir_all(fx.p("hr/new/deeper")).unwrap();
    fs::write(fx.p("hr/new/deeper/f"), b"f").unwrap();
    fs::write(fx.p("hr/old/after"), b"after").unwrap();
    let c = by_key(&fx);
    assert_eq!(c["hr"], (2, 2), "{c:?}");

    // A move across the key boundary keeps the key (O(1), no rewrap).
    fs::rename(fx.p("hr/old/after"), fx.p("elsewhere/after")).unwrap();
    assert_eq!(by_key(&fx)["hr"], (2, 2));
    assert_eq!(read(&fx.p("elsewhere/after")).unwrap(), b"after");
    // A directory moved out keeps its key too; its new files follow the
    // nearest assigned ancestor of where they are made (none: default).
    fs::rename(fx.p("hr/new"), fx.p("elsewhere/new")).unwrap();
    fs::write(fx.p("elsewhere/new/g"), b"g").unwrap();
    assert_eq!(by_key(&fx)["hr"], (2, 2));

    // The assignment survives a remount.
    fx.remount_ctl();
    fs::write(fx.p("hr/after-remount"), b"r").unwrap();
    assert_eq!(by_key(&fx)["hr"], (3, 2));

    // rewrap --path moves what is under /hr to hr, and nothing else.
    let out = fx.ctl_ok(&["rewrap", "--path", "/hr"]);
    assert!(out.contains("rewrap done"), "{out}");
    let c = by_key(&fx);
    // /hr itself (its record wraps the key of its names), hr/old and
    // hr/old/before: now hr too; nothing outside /hr moved.
    assert_eq!(c["hr"], (4, 4), "{c:?}");
    assert_eq!(c["default"], (1, 2), "{c:?}");
    assert_eq!(read(&fx.p("hr/old/before")).unwrap(), b"before");
    // A second run finds nothing to do (resumable: already moved entries
    // are skipped).
    let again = json(&fx, &["rewrap", "--path", "/hr"]);
    assert_eq!(again["rewrapped"], 0, "{again}");

    // A nested assignment wins over its ancestor.
    fx.ctl_ok(&["key", "create", "--alias", "payroll"]);
    fs::create_dir(fx.p("hr/payroll")).unwrap();
    fx.ctl_ok(&["key", "assign", "/hr/payroll", "payroll"]);
    fs::write(fx.p("hr/payroll/p"), b"p").unwrap();
    assert_eq!(by_key(&fx)["payroll"], (1, 0));
    // Unassigned: back to the ancestor's key.
    fx.ctl_ok(&["key", "unassign", "/hr/payroll"]);
    fs::write(fx.p("hr/payroll/q"), b"q").unwrap();
    assert_eq!(by_key(&fx)["payroll"], (1, 0));

    // Paths that are not directories of the volume are refused.
    for bad in ["/nope", "/hr/old/before", "/hr/../x"] {
        let out = fx.ctl_output(&["key", "assign", bad, "hr"]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
    }
    fx.unmount();
}

#[test]
fn deleting_a_key_shreds_exactly_its_entries_after_the_wait() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::create_dir(fx.p("tmp")).unwrap();
    fs::write(fx.p("keep"), b"keep").unwrap();
    fx.ctl_ok(&["key", "create", "--alias", "scratch"]);
    fx.ctl_ok(&["key", "assign", "/tmp", "scratch"]);
    fs::write(fx.p("tmp/gone"), b"gone").unwrap();

    // The default key cannot be deleted; an assigned key not before it is
    // unassigned.
    let out = fx.ctl_output(&["--key", "default", "schedule-deletion", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    let out = fx.ctl_output(&["--key", "scratch", "schedule-deletion", "--yes"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unassign"));
    fx.ctl_ok(&["key", "unassign", "/tmp"]);

    // Dry run without --yes and without a terminal: refused, naming the count.
    let out = fx.ctl_output(&["--key", "scratch", "schedule-deletion", "--wait", "1h"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 header"));
    // Scheduled, then cancelled: the key stays disabled.
    fx.ctl_ok(&[
        "--key",
        "scratch",
        "schedule-deletion",
        "--wait",
        "1h",
        "--yes",
    ]);
    assert_eq!(key_entry(&fx, "scratch")["state"], "pending_deletion");
    assert_errno(read(&fx.p("tmp/gone")), libc::EACCES, "pending deletion");
    let out = fx.ctl_output(&["--key", "scratch", "enable"]);
    assert_eq!(out.status.code(), Some(1), "enable while pending deletion");
    fx.ctl_ok(&["--key", "scratch", "cancel-deletion"]);
    assert_eq!(key_entry(&fx, "scratch")["state"], "disabled");
    fx.ctl_ok(&["--key", "scratch", "enable"]);
    assert_eq!(read(&fx.p("tmp/gone")).unwrap(), b"gone");

    fx.ctl_ok(&[
        "--key",
        "scratch",
        "schedule-deletion",
        "--wait",
        "1s",
        "--yes",
    ]);
    wait_for("scratch destroyed", Duration::from_secs(30), || {
        key_entry(&fx, "scratch")["versions"][0]["state"] == "destroyed"
    });
    assert_errno(read(&fx.p("tmp/gone")), libc::EACCES, "destroyed");
    assert_eq!(read(&fx.p("keep")).unwrap(), b"keep");
    fs::write(fx.p("tmp/new"), b"new").unwrap();
    fx.remount_ctl();
    assert_errno(
        read(&fx.p("tmp/gone")),
        libc::EACCES,
        "destroyed, remounted",
    );
    assert_eq!(read(&fx.p("tmp/new")).unwrap(), b"new");
    let c = json(&fx, &["census"]);
    assert_eq!(c["unreadable"], 1, "{c}");
    fx.unmount();
}

#[test]
fn imported_key_material_with_an_expiry() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let short = fx.scratch.join("short.key");
    fs::write(&short, [7u8; 31]).unwrap();
    let long = fx.scratch.join("long.key");
    fs::write(&long, [7u8; 33]).unwrap();
    let good = fx.scratch.join("good.key");
    let material: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    fs::write(&good, &material).unwrap();
    for bad in [&short, &long] {
        let out = fx.ctl_output(&[
            "key",
            "create",
            "--alias",
            "ext",
            "--import",
            bad.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("exactly 32 bytes"));
    }
    // --expires belongs to an import.
    let out = fx.ctl_output(&["key", "create", "--alias", "x", "--expires", "1d"]);
    assert_eq!(out.status.code(), Some(2));

    fx.ctl_ok(&[
        "key",
        "create",
        "--alias",
        "ext",
        "--import",
        good.to_str().unwrap(),
        "--expires",
        "8s",
    ]);
    let k = key_entry(&fx, "ext");
    assert_eq!(k["origin"], "external");
    assert!(k["expires"].as_u64().is_some());
    // Imported material does not rotate.
    let out = fx.ctl_output(&["--key", "ext", "rotate"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("imported"));
    fs::create_dir(fx.p("byok")).unwrap();
    fx.ctl_ok(&["key", "assign", "/byok", "ext"]);
    fs::write(fx.p("byok/f"), b"byok").unwrap();
    assert_eq!(read(&fx.p("byok/f")).unwrap(), b"byok");
    // Nothing prints the material: not the list, not status, not the log.
    let hex: String = material.iter().map(|b| format!("{b:02x}")).collect();
    for out in [
        fx.ctl_ok(&["--json", "key", "list"]),
        fx.ctl_ok(&["--json", "status"]),
        fx.ctl_ok(&["audit", "export"]),
        fx.log(),
    ] {
        assert!(!out.contains(&hex), "key material printed");
    }

    // Past its expiry the key refuses at once and the schedule disables it.
    wait_for("ext disabled", Duration::from_secs(40), || {
        key_entry(&fx, "ext")["state"] == "disabled"
    });
    assert_errno(read(&fx.p("byok/f")), libc::EACCES, "expired key");
    fs::write(fx.p("plain"), b"ok").unwrap();
    fx.unmount();
}

/// The state of version `version` of the key `alias`, from `key list`.
fn version_state(fx: &Fixture, alias: &str, version: u64) -> String {
    key_entry(fx, alias)["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .unwrap_or_else(|| panic!("{alias} has no version {version}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn eacces_listing(p: &std::path::Path) -> bool {
    fs::read_dir(p).err().and_then(|e| e.raw_os_error()) == Some(libc::EACCES)
}

#[test]
fn a_cached_directory_follows_a_rewrap_to_another_key_at_once() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fx.ctl_ok(&["key", "create", "--alias", "a"]);
    fx.ctl_ok(&["key", "create", "--alias", "b"]);
    // Made (and so cached by the mount) under the default key.
    fs::create_dir_all(fx.p("proj/sub")).unwrap();
    fs::write(fx.p("proj/sub/f"), b"f").unwrap();
    fx.ctl_ok(&["key", "assign", "/proj", "a"]);
    fx.ctl_ok(&["rewrap", "--path", "/proj"]);
    assert_eq!(by_key(&fx)["a"], (1, 2));
    // Listed under a: cached again.
    assert_eq!(fs::read_dir(fx.p("proj/sub")).unwrap().count(), 1);
    fx.ctl_ok(&["key", "assign", "/proj", "b"]);
    fx.ctl_ok(&["rewrap", "--path", "/proj"]);
    assert_eq!(by_key(&fx)["b"], (1, 2));

    // The old key disabled: the cached directories (proj, sub) are under
    // b now and work on, without a remount.
    fx.ctl_ok(&["--key", "a", "disable"]);
    assert_eq!(fs::read_dir(fx.p("proj/sub")).unwrap().count(), 1);
    assert_eq!(read(&fx.p("proj/sub/f")).unwrap(), b"f");
    fs::write(fx.p("proj/sub/g"), b"g").unwrap();
    // A rename of the cached directory keeps its record with b (its key
    // now), not with the key it was cached under.
    fs::rename(fx.p("proj/sub"), fx.p("proj/moved")).unwrap();
    assert_eq!(read(&fx.p("proj/moved/g")).unwrap(), b"g");
    fx.ctl_ok(&["--key", "a", "enable"]);
    assert_eq!(by_key(&fx)["b"], (2, 2));
    assert_eq!(by_key(&fx)["a"], (0, 0));

    // The new key disabled: the same cached directories refuse at once.
    fx.ctl_ok(&["--key", "b", "disable"]);
    assert!(
        eacces_listing(&fx.p("proj/moved")),
        "listing under disabled b"
    );
    assert!(eacces_listing(&fx.p("proj")), "listing under disabled b");
    assert_errno(read(&fx.p("proj/moved/f")), libc::EACCES, "read under b");
    fx.ctl_ok(&["--key", "b", "enable"]);
    // And all of it as it is after a remount.
    fx.remount_ctl();
    fx.ctl_ok(&["--key", "a", "disable"]);
    assert_eq!(fs::read_dir(fx.p("proj/moved")).unwrap().count(), 2);
    fx.unmount();
}

#[test]
fn cancelling_a_key_deletion_restores_each_version_as_it_was() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fx.ctl_ok(&["key", "create", "--alias", "k"]);
    let first = key_entry(&fx, "k")["primary"].as_u64().unwrap();
    let (second, third) = (first + 1, first + 2);
    fx.ctl_ok(&["--key", "k", "rotate"]);
    fx.ctl_ok(&["--key", "k", "rotate"]);
    // first: retired; second: retired then scheduled on its own; third:
    // the enabled primary.
    fx.ctl_ok(&["--key", "k", "trim", &third.to_string()]);
    fx.ctl_ok(&[
        "--key",
        "k",
        "schedule-deletion",
        &second.to_string(),
        "--wait",
        "1h",
        "--yes",
    ]);
    let before = [
        (first, "retired"),
        (second, "pending_deletion"),
        (third, "enabled"),
    ];
    let second_due = key_entry(&fx, "k")["versions"][1].clone();
    fx.ctl_ok(&["--key", "k", "schedule-deletion", "--wait", "2h", "--yes"]);
    assert_eq!(key_entry(&fx, "k")["state"], "pending_deletion");
    assert_eq!(version_state(&fx, "k", third), "pending_deletion");
    // Scheduling again while pending is refused.
    let out = fx.ctl_output(&["--key", "k", "schedule-deletion", "--wait", "2h", "--yes"]);
    assert_eq!(out.status.code(), Some(1));

    fx.ctl_ok(&["--key", "k", "cancel-deletion"]);
    assert_eq!(key_entry(&fx, "k")["state"], "disabled");
    for (v, state) in before {
        assert_eq!(version_state(&fx, "k", v), state, "version {v}");
    }
    // The version scheduled on its own keeps its own date.
    assert_eq!(key_entry(&fx, "k")["versions"][1], second_due);
    // The same after a remount (the states are in the keyring).
    fx.remount_ctl();
    for (v, state) in before {
        assert_eq!(version_state(&fx, "k", v), state, "version {v}, remounted");
    }

    // A whole-key deletion that runs destroys every version, the retired
    // one and the one with a later date of its own included.
    fx.ctl_ok(&["--key", "k", "schedule-deletion", "--wait", "1s", "--yes"]);
    wait_for("k destroyed", Duration::from_secs(30), || {
        version_state(&fx, "k", third) == "destroyed"
    });
    for v in [first, second, third] {
        assert_eq!(version_state(&fx, "k", v), "destroyed", "version {v}");
    }
    fx.unmount();
}

/// `sealfs ARGS…` (offline), which must succeed: its standard output.
fn sealfs_ok(args: &[&str]) -> String {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let out = sealfs(&args);
    assert!(out.status.success(), "sealfs {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn offline_import_rotate_and_rewrap_follow_named_keys() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fx.ctl_ok(&["key", "create", "--alias", "imp"]);
    fs::create_dir(fx.p("in")).unwrap();
    fx.ctl_ok(&["key", "assign", "/in", "imp"]);
    fx.unmount();
    let cipher = fx.cipher.to_str().unwrap().to_string();
    let pass = fx.passfile.to_str().unwrap().to_string();

    // Import into the assigned subtree (the library's create, create_dir
    // and staged writes): under imp, as a mount would make them.
    let src = fx.scratch.join("src");
    fs::create_dir_all(src.join("in/d")).unwrap();
    fs::write(src.join("in/a"), b"a").unwrap();
    fs::write(src.join("in/d/b"), b"b").unwrap();
    fs::write(src.join("top"), b"top").unwrap();
    sealfs_ok(&[
        "import",
        src.to_str().unwrap(),
        &cipher,
        "--passfile",
        &pass,
    ]);
    fx.mount_ctl();
    let census = by_key(&fx);
    // imp: in/a, in/d/b and in/d (/in itself was made before the assignment).
    assert_eq!(census["imp"], (2, 1), "{census:?}");
    assert_eq!(census["default"].0, 1, "{census:?}");
    let imp_before = key_entry(&fx, "imp")["primary"].as_u64().unwrap();
    let default_before = key_entry(&fx, "default")["primary"].clone();
    fx.unmount();

    // `sealfs CMD CIPHERDIR --passfile P --key imp --json`.
    let offline = |cmd: &str| -> Value {
        let out = sealfs_ok(&[cmd, &cipher, "--passfile", &pass, "--key", "imp", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd}: {e}: {out}"))
    };
    // Offline rotate --key: that key's primary moves, the default's not.
    let imp_now = offline("rotate")["primary"].as_u64().unwrap();
    assert_ne!(imp_now, imp_before);
    // Offline rewrap --key: exactly that key's entries move to its primary.
    let r = offline("rewrap");
    assert_eq!(r["rewrapped"], 3, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    let r = offline("rewrap");
    assert_eq!(r["rewrapped"], 0, "a second rewrap has nothing to do: {r}");
    // An unknown key is a clear error.
    for cmd in ["rotate", "rewrap"] {
        let out = std::process::Command::new(bin())
            .args([cmd, &cipher, "--passfile", &pass, "--key", "nosuch"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nosuch"),
            "{cmd}: {out:?}"
        );
    }

    fx.mount_ctl();
    assert_eq!(key_entry(&fx, "imp")["primary"], imp_now);
    assert_eq!(key_entry(&fx, "default")["primary"], default_before);
    // The old version holds nothing now: trimming it needs no force.
    fx.ctl_ok(&["--key", "imp", "trim", &imp_now.to_string()]);
    assert_eq!(read(&fx.p("in/d/b")).unwrap(), b"b");
    assert_eq!(read(&fx.p("top")).unwrap(), b"top");
    fx.unmount();
}
