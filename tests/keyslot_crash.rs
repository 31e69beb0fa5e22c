//! A SIGKILL at every step of every keyslot change (add, remove, upgrade,
//! Transit rewrap) leaves a volume that opens with the old or the new slot
//! set, without a false rollback alarm. The command kills itself at a named
//! kill point (`SEALFS_TEST_KILL_POINT`, see `sealfs::keyring::kill_point`):
//! after the change's audit record (nothing stored), between the two
//! keyring copies, after both (the store not yet recorded), and between
//! the three writes of an upgrade.

mod common;
mod external;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use common::vol::Vol;
use common::*;

const STORE_POINTS: [&str; 3] = [
    "keyring-change-recorded",
    "keyring-primary-written",
    "keyring-stored",
];

/// Runs `sealfs ARGS…` expecting it to kill itself at `point`.
fn killed_at(v: &Vol, args: &[&str], point: &str) {
    let out = v.run_env(args, None, &[("SEALFS_TEST_KILL_POINT", point)]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "sealfs {args:?} did not stop at {point}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The slot ids of the volume's keyring (public header).
fn slot_ids(v: &Vol) -> Vec<u64> {
    let l: serde_json::Value =
        serde_json::from_str(&v.ok(&["keyslot", "list", v.c(), "--json"])).unwrap();
    l["keyslots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect()
}

/// A passphrase volume with a key-file slot, mounted once (so it has an
/// audit log and an anchor) with `hello.txt` in it.
fn two_slots() -> Vol {
    let v = Vol::new();
    init_volume(&v.cipher, &v.pass);
    fs::write(v.p("key"), [3u8; 32]).unwrap();
    v.ok(&[
        "keyslot",
        "add",
        v.c(),
        "--passfile",
        v.pass.to_str().unwrap(),
        "--new-key-file",
        v.p("key").to_str().unwrap(),
    ]);
    let m = v.mount(&["--passfile", v.pass.to_str().unwrap()]);
    fs::write(v.mnt.join("hello.txt"), b"hello\n").unwrap();
    m.unmount();
    v
}

#[test]
fn a_kill_during_keyslot_add_or_remove_leaves_the_old_or_the_new_set() {
    for point in STORE_POINTS {
        // add: the passphrase always opens; the new slot is all there or not.
        let v = two_slots();
        let pass = v.pass.to_str().unwrap();
        fs::write(v.p("pass2"), "another one\n").unwrap();
        killed_at(
            &v,
            &[
                "keyslot",
                "add",
                v.c(),
                "--passfile",
                pass,
                "--new-passfile",
                v.p("pass2").to_str().unwrap(),
                "--new-kdf-memory-kib",
                "8192",
                "--new-kdf-iterations",
                "1",
            ],
            point,
        );
        v.mount_reads(&["--passfile", pass]);
        let ids = slot_ids(&v);
        assert!(ids == [1, 2] || ids == [1, 2, 3], "{point}: {ids:?}");
        let new_opens = v
            .run(
                &["info", v.c(), "--passfile", v.p("pass2").to_str().unwrap()],
                None,
            )
            .status
            .success();
        assert_eq!(new_opens, ids.len() == 3, "{point}: {ids:?}");

        // remove: the passphrase always opens; the key file only with the
        // old set, and then the old set is what the volume keeps.
        let v = two_slots();
        let pass = v.pass.to_str().unwrap();
        killed_at(
            &v,
            &["keyslot", "remove", v.c(), "2", "--passfile", pass],
            point,
        );
        let key_file = v.p("key");
        let key = ["--key-file", key_file.to_str().unwrap()];
        let by_key = v
            .run(&["info", v.c(), key[0], key[1]], None)
            .status
            .success();
        if by_key {
            v.mount_reads(&key);
            assert_eq!(slot_ids(&v), [1, 2], "{point}");
        }
        v.mount_reads(&["--passfile", pass]);
        let ids = slot_ids(&v);
        assert!(ids == [1] || ids == [1, 2], "{point}: {ids:?}");
    }
}

#[test]
fn a_kill_during_an_upgrade_leaves_a_volume_that_opens_and_upgrades() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let pass = fixture.join("passphrase");
    let pass = pass.to_str().unwrap();
    for point in [
        "upgrade-config-announced",
        "keyring-change-recorded",
        "keyring-primary-written",
        "keyring-stored",
        "upgrade-keyring-stored",
    ] {
        let v = Vol::new();
        let ok = Command::new("cp")
            .arg("-a")
            .arg(fixture.join("cipher"))
            .arg(&v.cipher)
            .status()
            .unwrap();
        assert!(ok.success());
        // Mounted once: the volume has an audit log (the change's record).
        v.mount(&["--passfile", pass]).unmount();
        killed_at(&v, &["upgrade", v.c(), "--passfile", pass], point);
        // It opens, and a new upgrade (or nothing, if it is done) completes it.
        let m = v.mount(&["--passfile", pass]);
        assert!(fs::read_dir(&v.mnt).unwrap().count() > 3, "{point}");
        m.unmount();
        let layout = fs::read(v.cipher.join("sealfs.keyring")).unwrap()[8];
        if layout == 1 {
            v.ok(&["upgrade", v.c(), "--passfile", pass]);
        }
        let cfg = fs::read_to_string(v.cipher.join("sealfs.toml")).unwrap();
        assert!(
            cfg.contains("\"keyslots\"") && !cfg.contains("[kdf]"),
            "{point}: {cfg}"
        );
        assert_eq!(slot_ids(&v), [1], "{point}");
        v.mount(&["--passfile", pass]).unmount();
    }
}

#[test]
fn a_kill_during_a_transit_rewrap_leaves_a_slot_that_opens() {
    let Some(bao) = external::OpenBao::start() else {
        return;
    };
    bao.create_transit_key("vault", true);
    let v = Vol::new();
    let tok = v.p("token");
    fs::write(&tok, bao.root_token()).unwrap();
    let tok = tok.to_str().unwrap();
    v.ok(&[
        "init",
        v.c(),
        "--transit-addr",
        bao.addr(),
        "--transit-key",
        "vault",
        "--transit-token-file",
        tok,
    ]);
    v.mount(&["--transit-token-file", tok]).unmount();
    for point in STORE_POINTS {
        bao.bao(&["write", "-f", "transit/keys/vault/rotate"]);
        killed_at(
            &v,
            &["keyslot", "rewrap", v.c(), "1", "--transit-token-file", tok],
            point,
        );
        let m = v.mount(&["--transit-token-file", tok]);
        m.unmount();
    }
}
