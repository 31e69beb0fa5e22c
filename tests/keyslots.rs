//! Keyslots with the local providers (passphrase, key file, recovery key),
//! the upgrade of a layout-1 volume, and the local rollback anchor (issue
//! 16, finding 3): each on real mounts through the `sealfs` binary. The
//! PKCS#11 and Transit providers are in tests/kms_pkcs11.rs and
//! tests/kms_transit.rs.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::vol::Vol;
use common::*;

/// A volume with a passphrase, a key-file and a recovery-key slot, and one
/// file in it. Returns (volume, recovery key).
fn three_slots() -> (Vol, String) {
    let v = Vol::new();
    fs::write(v.p("key"), [7u8; 32]).unwrap();
    let (pass, key) = (v.pass.to_str().unwrap(), v.p("key"));
    let out = v.ok(&[
        "init",
        v.c(),
        "--passfile",
        pass,
        "--key-file",
        key.to_str().unwrap(),
        "--recovery-key",
        FAST_KDF[0],
        FAST_KDF[1],
        FAST_KDF[2],
        FAST_KDF[3],
    ]);
    let rk = out.trim().to_string();
    assert_eq!(
        rk.len(),
        56 + 13,
        "the recovery key alone on stdout: {out:?}"
    );
    fs::write(v.p("rk"), &rk).unwrap();
    let m = v.mount(&["--passfile", pass]);
    fs::write(v.mnt.join("hello.txt"), b"hello\n").unwrap();
    m.unmount();
    (v, rk)
}

#[test]
fn each_local_provider_unlocks_and_the_slot_is_named() {
    let (v, rk) = three_slots();
    let list: serde_json::Value =
        serde_json::from_str(&v.ok(&["keyslot", "list", v.c(), "--json"])).unwrap();
    let kinds: Vec<&str> = list["keyslots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["provider"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["passphrase", "key-file", "recovery-key"]);
    assert_eq!(list["layout"], 2);

    for (secret, slot) in [
        (vec!["--passfile", v.pass.to_str().unwrap()], 1),
        (vec!["--key-file", v.p("key").to_str().unwrap()], 2),
        (vec!["--recovery-key", v.p("rk").to_str().unwrap()], 3),
    ] {
        let m = v.mount(&secret);
        assert_eq!(fs::read(v.mnt.join("hello.txt")).unwrap(), b"hello\n");
        let st: serde_json::Value = serde_json::from_str(&v.ok(&[
            "ctl",
            "--mount",
            v.mnt.to_str().unwrap(),
            "status",
            "--json",
        ]))
        .unwrap();
        assert_eq!(st["keyring"]["unlocked_by"]["slot"], slot, "{st}");
        assert_eq!(st["keyring"]["keyslots"].as_array().unwrap().len(), 3);
        let log = m.log();
        m.unmount();
        // Neither the passphrase nor the recovery key in the daemon's log
        // (at debug level).
        assert!(!log.contains(PASSPHRASE), "{log}");
        assert!(!log.contains(&rk[..14]), "{log}");
    }
    // The recovery key typed on stdin.
    let o = v.run(&["info", v.c(), "--recovery-key", "-", "--json"], Some(&rk));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["unlocked_by"]["provider"], "recovery-key");
    assert_eq!(info["rollback_check"], "ok");
    // A mistyped recovery key says so, with the wrong-secret code.
    let mut typo: Vec<char> = rk.chars().collect();
    typo[0] = if typo[0] == 'A' { 'B' } else { 'A' };
    fs::write(v.p("typo"), typo.iter().collect::<String>()).unwrap();
    let err = v.fails(
        &[
            "info",
            v.c(),
            "--recovery-key",
            v.p("typo").to_str().unwrap(),
        ],
        12,
    );
    assert!(err.contains("mistyped"), "{err}");
    // Each mount is in the audit log, naming its slot, never a secret.
    let mounts: Vec<String> = v
        .audit()
        .iter()
        .filter(|r| r["op"] == "mount")
        .map(|r| r["detail"].as_str().unwrap().to_string())
        .collect();
    assert!(
        mounts.iter().any(|d| d.contains("keyslot 3 (recovery-key")),
        "{mounts:?}"
    );
    assert!(
        mounts.iter().any(|d| d.contains("keyslot 2 (key-file")),
        "{mounts:?}"
    );
}

#[test]
fn slots_are_added_and_removed_and_the_last_one_stays() {
    let (v, _rk) = three_slots();
    let pass = v.pass.to_str().unwrap();
    fs::write(v.p("pass2"), "second passphrase\n").unwrap();
    let out = v.ok(&[
        "keyslot",
        "add",
        v.c(),
        "--key-file",
        v.p("key").to_str().unwrap(),
        "--new-passfile",
        v.p("pass2").to_str().unwrap(),
        "--label",
        "desk",
        "--new-kdf-memory-kib",
        "8192",
        "--new-kdf-iterations",
        "1",
        "--json",
    ]);
    let added: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["keyslot"]["id"], 4);
    assert_eq!(added["keyslot"]["label"], "desk");
    v.mount_reads(&["--passfile", v.p("pass2").to_str().unwrap()]);

    // Remove the first passphrase: it no longer unlocks, the others do.
    v.ok(&["keyslot", "remove", v.c(), "1", "--passfile", pass]);
    v.fails(&["info", v.c(), "--passfile", pass], 12);
    // The token slot gone, the recovery key still opens (issue 17's test
    // with a local slot; tests/kms_pkcs11.rs does it with the token).
    v.ok(&[
        "keyslot",
        "remove",
        v.c(),
        "2",
        "--recovery-key",
        v.p("rk").to_str().unwrap(),
    ]);
    v.mount_reads(&["--recovery-key", v.p("rk").to_str().unwrap()]);
    v.ok(&[
        "keyslot",
        "remove",
        v.c(),
        "4",
        "--recovery-key",
        v.p("rk").to_str().unwrap(),
    ]);
    let err = v.fails(
        &[
            "keyslot",
            "remove",
            v.c(),
            "3",
            "--recovery-key",
            v.p("rk").to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("last one"), "{err}");
    // Every change is in the audit log with the generation it made.
    let recs = v.audit_with(&["--recovery-key", v.p("rk").to_str().unwrap()]);
    let ops: Vec<&str> = recs
        .iter()
        .filter(|r| r["keyring_generation"].is_u64())
        .map(|r| r["op"].as_str().unwrap())
        .collect();
    for op in [
        "keyslot_add",
        "keyslot_remove",
        "mount",
        "unmount",
        "keyring_stored",
    ] {
        assert!(ops.contains(&op), "{op} not audited: {ops:?}");
    }
}

/// Copies the frozen layout-1 fixture.
fn v1_copy(v: &Vol) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let status = Command::new("cp")
        .arg("-a")
        .arg(src.join("cipher"))
        .arg(&v.cipher)
        .status()
        .unwrap();
    assert!(status.success());
    src.join("passphrase")
}

#[test]
fn a_layout_one_volume_upgrades_in_place_with_a_new_kek() {
    let v = Vol::new();
    let pass = v1_copy(&v);
    let pass = pass.to_str().unwrap();
    let before = fs::read(v.cipher.join("sealfs.keyring")).unwrap();
    assert_eq!(&before[8..10], &1u16.to_le_bytes(), "layout 1 before");
    let list = v.ok(&["keyslot", "list", v.c()]);
    assert!(list.contains("layout 1"), "{list}");
    v.ok(&["upgrade", v.c(), "--passfile", pass]);
    let after = fs::read(v.cipher.join("sealfs.keyring")).unwrap();
    assert_eq!(&after[8..10], &2u16.to_le_bytes(), "layout 2 after");
    let cfg = fs::read_to_string(v.cipher.join("sealfs.toml")).unwrap();
    assert!(cfg.contains("\"keyslots\""), "{cfg}");
    assert!(!cfg.contains("[kdf]"), "{cfg}");
    // It gained hard links and extended attributes too (docs/FORMAT.md §1.1).
    assert!(
        cfg.contains("\"hard-links\"") && cfg.contains("\"xattrs\""),
        "{cfg}"
    );
    let again = v.fails(&["upgrade", v.c(), "--passfile", pass], 1);
    assert!(again.contains("up to date"), "{again}");
    // Every file still reads (the fixture's own manifest).
    let m = Mounted::start(&v.cipher, &v.mnt, Path::new(pass), &[], &v.p("daemon.log"));
    let manifest = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/manifest.jsonl"),
    )
    .unwrap();
    for line in manifest.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["type"] == "file" {
            let p = v.mnt.join(e["path"].as_str().unwrap());
            assert_eq!(fs::metadata(&p).unwrap().len(), e["size"].as_u64().unwrap());
        }
    }
    // `ln` and `setfattr` work on the upgraded volume, on an old file and
    // a new one, and survive a remount.
    let old = manifest
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["type"] == "file" && e["size"].as_u64().unwrap() > 0)
        .map(|e| v.mnt.join(e["path"].as_str().unwrap()))
        .unwrap();
    let old_data = fs::read(&old).unwrap();
    fs::hard_link(&old, v.mnt.join("old-link")).unwrap();
    fs::write(v.mnt.join("new"), b"new file").unwrap();
    fs::hard_link(v.mnt.join("new"), v.mnt.join("new-link")).unwrap();
    for (f, val) in [("old-link", "a"), ("new", "b")] {
        let out = Command::new("setfattr")
            .args(["-n", "user.tag", "-v", val])
            .arg(v.mnt.join(f))
            .output()
            .unwrap();
        assert!(out.status.success(), "setfattr {f}: {out:?}");
    }
    m.unmount();
    let m = Mounted::start(&v.cipher, &v.mnt, Path::new(pass), &[], &v.p("daemon2.log"));
    assert_eq!(fs::read(v.mnt.join("old-link")).unwrap(), old_data);
    assert_eq!(fs::read(v.mnt.join("new-link")).unwrap(), b"new file");
    assert_eq!(fs::metadata(&old).unwrap().nlink(), 2);
    for (f, val) in [
        (old.as_path(), "a"),
        (v.mnt.join("new-link").as_path(), "b"),
    ] {
        let out = Command::new("getfattr")
            .args(["--only-values", "-n", "user.tag"])
            .arg(f)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), val, "{out:?}");
    }
    m.unmount();
    // The old passphrase's slot replaced by another: the old passphrase is
    // locked out for good (the KEK was never Argon2(old passphrase)).
    fs::write(v.p("new"), "a new passphrase\n").unwrap();
    v.ok(&[
        "keyslot",
        "add",
        v.c(),
        "--passfile",
        pass,
        "--new-passfile",
        v.p("new").to_str().unwrap(),
        "--new-kdf-memory-kib",
        "8192",
        "--new-kdf-iterations",
        "1",
    ]);
    v.ok(&["keyslot", "remove", v.c(), "1", "--passfile", pass]);
    v.fails(&["info", v.c(), "--passfile", pass], 12);
    v.ok(&["info", v.c(), "--passfile", v.p("new").to_str().unwrap()]);
}

#[test]
fn keyslot_add_upgrades_a_layout_one_volume() {
    let v = Vol::new();
    let pass = v1_copy(&v);
    let out = v.ok(&[
        "keyslot",
        "add",
        v.c(),
        "--passfile",
        pass.to_str().unwrap(),
        "--new-recovery-key",
    ]);
    let rk = out.trim();
    let list = v.ok(&["keyslot", "list", v.c()]);
    assert!(
        list.contains("passphrase") && list.contains("recovery-key"),
        "{list}"
    );
    let o = v.run(&["info", v.c(), "--recovery-key", "-"], Some(rk));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The keyring copies as they are now.
fn save_keyring(v: &Vol) -> (Vec<u8>, Vec<u8>) {
    (
        fs::read(v.cipher.join("sealfs.keyring")).unwrap(),
        fs::read(v.cipher.join("sealfs.keyring.bak")).unwrap(),
    )
}

fn restore_keyring(v: &Vol, k: &(Vec<u8>, Vec<u8>)) {
    fs::write(v.cipher.join("sealfs.keyring"), &k.0).unwrap();
    fs::write(v.cipher.join("sealfs.keyring.bak"), &k.1).unwrap();
}

#[test]
fn an_older_keyring_put_back_is_refused_and_accepting_is_audited() {
    let (v, _) = three_slots();
    let pass = v.pass.to_str().unwrap();
    let old = save_keyring(&v);
    // Disable the key on a mount, then put the older keyring back (the
    // attack of finding 3: it would silently clear the disable).
    let m = v.mount(&["--passfile", pass]);
    v.ok(&["ctl", "--mount", v.mnt.to_str().unwrap(), "disable"]);
    m.unmount();
    restore_keyring(&v, &old);
    let info: serde_json::Value =
        serde_json::from_str(&v.ok(&["info", v.c(), "--passfile", pass, "--json"])).unwrap();
    assert!(
        info["rollback_check"]
            .as_str()
            .unwrap()
            .contains("audit log records"),
        "{info}"
    );
    let err = v.fails(
        &["mount", v.c(), v.mnt.to_str().unwrap(), "--passfile", pass],
        40,
    );
    assert!(err.contains("rollback detected"), "{err}");
    assert!(!is_mounted(&v.mnt));
    // Offline key commands refuse too (they would launder the rollback).
    v.fails(&["rotate", v.c(), "--passfile", pass], 40);
    // Accepted: mounts, and the acceptance is recorded.
    let m = v.mount(&["--passfile", pass, "--accept-rollback"]);
    m.unmount();
    let recs = v.audit();
    let accepted: Vec<_> = recs
        .iter()
        .filter(|r| r["op"] == "rollback_accepted")
        .collect();
    assert_eq!(accepted.len(), 1, "{recs:?}");
    assert!(accepted[0]["detail"]
        .as_str()
        .unwrap()
        .contains("audit log records"));
    // From then on the volume mounts as usual.
    v.mount_reads(&["--passfile", pass]);
}

#[test]
fn a_deleted_or_shortened_audit_log_is_refused() {
    let (v, _) = three_slots();
    let pass = v.pass.to_str().unwrap();
    let audit = v.cipher.join("sealfs.audit");
    let seg = audit.join("00000001.log");
    // Shortened: records before the keyring's anchor cut off (what follows
    // the anchor, the last record or two, is not covered: cut far more).
    let bytes = fs::read(&seg).unwrap();
    fs::write(&seg, &bytes[..bytes.len() / 2]).unwrap();
    let err = v.fails(
        &["mount", v.c(), v.mnt.to_str().unwrap(), "--passfile", pass],
        40,
    );
    assert!(err.contains("no longer reaches"), "{err}");
    fs::write(&seg, &bytes).unwrap();
    v.mount_reads(&["--passfile", pass]);
    // The whole folder gone.
    fs::rename(&audit, v.p("audit-away")).unwrap();
    let err = v.fails(
        &["mount", v.c(), v.mnt.to_str().unwrap(), "--passfile", pass],
        40,
    );
    assert!(err.contains("audit log is gone"), "{err}");
    let m = v.mount(&["--passfile", pass, "--accept-rollback"]);
    m.unmount();
    let recs = v.audit();
    assert_eq!(recs[0]["op"], "rollback_accepted", "{recs:?}");
    v.mount_reads(&["--passfile", pass]);
}

#[test]
fn offline_changes_and_schedules_are_audited() {
    let (v, _) = three_slots();
    let pass = v.pass.to_str().unwrap();
    v.ok(&["rotate", v.c(), "--passfile", pass]);
    let recs = v.audit();
    let rotate = recs
        .iter()
        .find(|r| r["op"] == "rotate")
        .expect("rotate audited");
    let g = rotate["keyring_generation"].as_u64().unwrap();
    assert!(recs
        .iter()
        .any(|r| r["op"] == "keyring_stored" && r["keyring_generation"] == g));
    // An automatic rotation is audited on behalf of the daemon.
    let m = v.mount(&["--passfile", pass]);
    let mnt = v.mnt.to_str().unwrap();
    v.ok(&[
        "ctl",
        "--mount",
        mnt,
        "rotation-period",
        "2s",
        "--allow-short",
    ]);
    assert!(
        wait_until(std::time::Duration::from_secs(20), || {
            let st: serde_json::Value =
                serde_json::from_str(&v.ok(&["ctl", "--mount", mnt, "status", "--json"])).unwrap();
            st["primary"].as_u64().unwrap() >= 3
        }),
        "no automatic rotation"
    );
    v.ok(&["ctl", "--mount", mnt, "rotation-period", "off"]);
    let out = v.ok(&["ctl", "--mount", mnt, "audit", "export", "--op", "rotate"]);
    m.unmount();
    assert!(
        out.lines().any(|l| l.contains("\"automatic\"")
            && l.contains("\"comm\":\"sealfs\"")
            && l.contains("keyring_generation")),
        "{out}"
    );
}
