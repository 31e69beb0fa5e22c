//! PKCS#11 keyslots against a real SoftHSM2 token (started by the test,
//! [`external::SoftHsm`]): init and mount through the token, an
//! unattended mount (the PIN source in the slot's URI), each failure with
//! its exit code (module missing 30, wrong PIN 31, key missing 32, token
//! removed 33), the recovery key after the token's slot is removed, and no
//! PIN in logs or messages.

mod common;
mod external;

use std::fs;
use std::process::Command;

use common::vol::Vol;
use common::*;
use external::SoftHsm;

/// A volume whose slots are the token's key and a recovery key.
struct TokenVol {
    v: Vol,
    uri: String,
    pin: String,
    rk: String,
}

fn token_vol(hsm: &SoftHsm) -> TokenVol {
    hsm.init_token("vault");
    let v = Vol::new();
    let pin = v.p("pin");
    fs::write(&pin, format!("{}\n", SoftHsm::USER_PIN)).unwrap();
    let uri = hsm.uri("vault", Some("sealfs-kek"));
    let out = v.ok(&[
        "init",
        v.c(),
        "--pkcs11",
        &uri,
        "--pin-file",
        pin.to_str().unwrap(),
        "--recovery-key",
    ]);
    let rk = out.trim().to_string();
    fs::write(v.p("rk"), &rk).unwrap();
    let tv = TokenVol {
        uri,
        pin: pin.to_str().unwrap().to_string(),
        rk,
        v,
    };
    let m = tv.v.mount(&["--pkcs11", &tv.uri, "--pin-file", &tv.pin]);
    fs::write(tv.v.mnt.join("hello.txt"), b"hello\n").unwrap();
    m.unmount();
    tv
}

#[test]
fn init_and_mount_through_the_token() {
    let Some(hsm) = SoftHsm::start() else { return };
    let t = token_vol(&hsm);
    let v = &t.v;
    let list = v.ok(&["keyslot", "list", v.c()]);
    assert!(
        list.contains("pkcs11:token=vault;object=sealfs-kek"),
        "{list}"
    );
    assert!(!list.contains(SoftHsm::USER_PIN), "{list}");
    // The PIN from an environment variable works too.
    let m = {
        let s = ["--pkcs11", t.uri.as_str(), "--pin-env", "SEALFS_TEST_PIN"];
        std::env::set_var("SEALFS_TEST_PIN", SoftHsm::USER_PIN);
        v.mount(&s)
    };
    assert_eq!(fs::read(v.mnt.join("hello.txt")).unwrap(), b"hello\n");
    let st: serde_json::Value = serde_json::from_str(&v.ok(&[
        "ctl",
        "--mount",
        v.mnt.to_str().unwrap(),
        "status",
        "--json",
    ]))
    .unwrap();
    let by = &st["keyring"]["unlocked_by"];
    assert_eq!(by["provider"], "pkcs11");
    assert!(by["description"].as_str().unwrap().contains("token=vault"));
    let log = m.log();
    m.unmount();
    assert!(
        !log.contains(SoftHsm::USER_PIN),
        "PIN in the daemon's log: {log}"
    );
    assert!(!st.to_string().contains(SoftHsm::USER_PIN));
    // Nothing the CLI printed, nothing in the audit log holds the PIN.
    let audit = v.ok(&[
        "audit",
        "export",
        v.c(),
        "--recovery-key",
        v.p("rk").to_str().unwrap(),
    ]);
    assert!(
        audit.contains("keyslot 1 (pkcs11: pkcs11:token=vault"),
        "{audit}"
    );
    assert!(!audit.contains(SoftHsm::USER_PIN));
}

#[test]
fn a_pin_source_in_the_uri_mounts_unattended() {
    let Some(hsm) = SoftHsm::start() else { return };
    hsm.init_token("vault");
    let v = Vol::new();
    let pin = v.p("pin");
    fs::write(&pin, format!("{}\n", SoftHsm::USER_PIN)).unwrap();
    let uri = format!(
        "{}&pin-source={}",
        hsm.uri("vault", Some("k")),
        pin.display()
    );
    v.ok(&["init", v.c(), "--pkcs11", &uri]);
    // No unlock option, no terminal: the token slot opens by itself.
    let m = v.mount(&[]);
    fs::write(v.mnt.join("x"), b"x").unwrap();
    m.unmount();
    // A URI with a literal PIN never stores it.
    let v2 = Vol::new();
    let literal = format!(
        "{}&pin-value={}",
        hsm.uri("vault", Some("k2")),
        SoftHsm::USER_PIN
    );
    v2.ok(&["init", v2.c(), "--pkcs11", &literal]);
    let ring = fs::read(v2.cipher.join("sealfs.keyring")).unwrap();
    assert!(!ring
        .windows(SoftHsm::USER_PIN.len())
        .any(|w| w == SoftHsm::USER_PIN.as_bytes()));
}

#[test]
fn each_token_failure_has_its_exit_code() {
    let Some(hsm) = SoftHsm::start() else { return };
    let t = token_vol(&hsm);
    let v = &t.v;
    let mnt = v.mnt.to_str().unwrap();
    // Wrong PIN: 31.
    fs::write(v.p("bad-pin"), "0000\n").unwrap();
    let err = v.fails(
        &[
            "mount",
            v.c(),
            mnt,
            "--pkcs11",
            &t.uri,
            "--pin-file",
            v.p("bad-pin").to_str().unwrap(),
        ],
        31,
    );
    assert!(err.contains("PIN") && !err.contains("0000"), "{err}");
    // Module missing: 30 (the caller's module path wins over the slot's).
    let no_module = "pkcs11:token=vault?module-path=/nonexistent/libsofthsm2.so";
    let err = v.fails(
        &[
            "mount",
            v.c(),
            mnt,
            "--pkcs11",
            no_module,
            "--pin-file",
            &t.pin,
        ],
        30,
    );
    assert!(err.contains("module"), "{err}");
    // Token removed: 33.
    let out = Command::new("softhsm2-util")
        .args(["--delete-token", "--token", "vault"])
        .env("SOFTHSM2_CONF", hsm.conf())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = v.fails(
        &[
            "mount",
            v.c(),
            mnt,
            "--pkcs11",
            &t.uri,
            "--pin-file",
            &t.pin,
        ],
        33,
    );
    assert!(err.contains("token"), "{err}");
    // A new token of the same name, without the key: 32.
    hsm.init_token("vault");
    let err = v.fails(
        &[
            "mount",
            v.c(),
            mnt,
            "--pkcs11",
            &t.uri,
            "--pin-file",
            &t.pin,
        ],
        32,
    );
    assert!(err.contains("no AES secret key"), "{err}");
    assert!(!is_mounted(&v.mnt));
    // The recovery key still opens the volume.
    v.mount_reads(&["--recovery-key", v.p("rk").to_str().unwrap()]);
}

#[test]
fn recovery_key_after_the_token_slot_is_removed() {
    let Some(hsm) = SoftHsm::start() else { return };
    let t = token_vol(&hsm);
    let v = &t.v;
    v.ok(&[
        "keyslot",
        "remove",
        v.c(),
        "1",
        "--pkcs11",
        &t.uri,
        "--pin-file",
        &t.pin,
    ]);
    let err = v.fails(
        &["info", v.c(), "--pkcs11", &t.uri, "--pin-file", &t.pin],
        12,
    );
    assert!(err.contains("no keyslot"), "{err}");
    let o = v.run(
        &[
            "mount",
            v.c(),
            v.mnt.to_str().unwrap(),
            "--recovery-key",
            "-",
        ],
        Some(&t.rk),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read(v.mnt.join("hello.txt")).unwrap(), b"hello\n");
    let m = Mounted::adopt_daemon(&v.cipher, &v.mnt, &v.p("daemon.log"));
    m.unmount();
    // A passphrase volume gets a token slot added.
    let p = Vol::new();
    init_volume(&p.cipher, &p.pass);
    p.ok(&[
        "keyslot",
        "add",
        p.c(),
        "--passfile",
        p.pass.to_str().unwrap(),
        "--new-pkcs11",
        &hsm.uri("vault", Some("second")),
        "--new-pin-file",
        &t.pin,
    ]);
    let m = p.mount(&[
        "--pkcs11",
        &hsm.uri("vault", Some("second")),
        "--pin-file",
        &t.pin,
    ]);
    m.unmount();
}
