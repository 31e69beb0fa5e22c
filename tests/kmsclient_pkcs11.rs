//! `sealfs::kmsclient::pkcs11` against a real SoftHSM2 token: generate a
//! key, seal and open a KEK, and every failure the keyslot layer must tell
//! apart (wrong PIN, missing key, missing module, tampered blob, other AAD).
//!
//! Each test owns a private token store ([`external::SoftHsm`]); they run
//! one at a time because SoftHSM2 reads its configuration per process.

mod external;

use std::time::Instant;

use external::SoftHsm;
use sealfs::kmsclient::pkcs11::{Pkcs11Error, Pkcs11Token, Pkcs11Uri, BLOB_LEN};
use sealfs::kmsclient::SecretSource;

const KEK: [u8; 32] = *b"0123456789abcdef0123456789ABCDEF";
const AAD: &[u8] = b"volume-id:1234;slot:0";

fn uri(s: &str) -> Pkcs11Uri {
    s.parse().expect("valid pkcs11 URI")
}

/// A store with token "sealfs" holding key "kek"; the token stays open.
fn token_with_key(hsm: &SoftHsm) -> Pkcs11Token {
    hsm.init_token("sealfs");
    let mut t =
        Pkcs11Token::open(&uri(&hsm.uri("sealfs", None)), SoftHsm::USER_PIN).expect("open token");
    let id = t.generate_key("kek").expect("generate key");
    assert_eq!(id.len(), 16);
    t
}

#[test]
fn generate_wrap_unwrap_round_trip() {
    let Some(hsm) = SoftHsm::start() else { return };
    let t = token_with_key(&hsm);
    assert!(
        t.key_is_protected().unwrap(),
        "key must be sensitive and never extractable"
    );
    let blob = t.wrap(&KEK, AAD).unwrap();
    assert_eq!(blob.len(), BLOB_LEN);
    assert_eq!(blob[0], 1);
    assert!(!blob.windows(8).any(|w| KEK.windows(8).any(|k| k == w)));
    // Two seals of the same KEK differ (fresh IV).
    assert_ne!(t.wrap(&KEK, AAD).unwrap(), blob);
    assert_eq!(*t.unwrap(&blob, AAD).unwrap(), KEK);
    drop(t);

    // A fresh session (another process, later) finds the key by label and
    // by id, with the PIN from a file named in the URI.
    let pin_file = hsm.dir().join("pin");
    std::fs::write(&pin_file, format!("{}\n", SoftHsm::USER_PIN)).unwrap();
    let u = uri(&format!(
        "{}&pin-source={}",
        hsm.uri("sealfs", Some("kek")),
        pin_file.display()
    ));
    let pin = u.pin.as_ref().unwrap().resolve().unwrap();
    let t2 = Pkcs11Token::open(&u, &pin).unwrap();
    assert_eq!(t2.token_label(), "sealfs");
    assert_eq!(*t2.unwrap(&blob, AAD).unwrap(), KEK);

    // Timing, median of 10: a cold unwrap (load and initialise the module,
    // find the token, log in, find the key, decrypt), and an unwrap on an
    // open session.
    let mut warm = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        t2.unwrap(&blob, AAD).unwrap();
        warm.push(start.elapsed());
    }
    drop(t2);
    let mut times = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let t = Pkcs11Token::open(&u, &pin).unwrap();
        assert_eq!(*t.unwrap(&blob, AAD).unwrap(), KEK);
        times.push(start.elapsed());
    }
    times.sort();
    warm.sort();
    println!(
        "pkcs11 timing: cold load+login+unwrap median {:?} (min {:?}, max {:?}); unwrap on an open session median {:?}",
        times[5], times[0], times[9], warm[5]
    );
}

#[test]
fn wrong_pin_is_its_own_error() {
    let Some(hsm) = SoftHsm::start() else { return };
    hsm.init_token("sealfs");
    let err = Pkcs11Token::open(&uri(&hsm.uri("sealfs", None)), "not-the-pin").unwrap_err();
    assert!(matches!(err, Pkcs11Error::PinIncorrect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("PIN") && msg.contains("incorrect"), "{msg}");
    assert!(!msg.contains("not-the-pin") && !format!("{err:?}").contains("not-the-pin"));
    // The right PIN still works afterwards.
    Pkcs11Token::open(&uri(&hsm.uri("sealfs", None)), SoftHsm::USER_PIN).unwrap();
}

#[test]
fn missing_key_and_missing_token_are_distinct() {
    let Some(hsm) = SoftHsm::start() else { return };
    let t = token_with_key(&hsm);
    drop(t);
    let err =
        Pkcs11Token::open(&uri(&hsm.uri("sealfs", Some("other"))), SoftHsm::USER_PIN).unwrap_err();
    assert!(matches!(err, Pkcs11Error::KeyNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("object=other"), "{err}");

    let err = Pkcs11Token::open(
        &uri(&hsm.uri("nosuchtoken", Some("kek"))),
        SoftHsm::USER_PIN,
    )
    .unwrap_err();
    assert!(matches!(err, Pkcs11Error::TokenNotFound { .. }), "{err:?}");

    // By id: the right id opens, a wrong one is KeyNotFound.
    let mut t = Pkcs11Token::open(&uri(&hsm.uri("sealfs", None)), SoftHsm::USER_PIN).unwrap();
    let id = t.generate_key("kek2").unwrap();
    let blob = t.wrap(&KEK, AAD).unwrap();
    let enc: String = id.iter().map(|b| format!("%{b:02x}")).collect();
    let by_id = format!(
        "pkcs11:token=sealfs;id={enc}?module-path={}",
        hsm.module().display()
    );
    let t2 = Pkcs11Token::open(&uri(&by_id), SoftHsm::USER_PIN).unwrap();
    assert_eq!(*t2.unwrap(&blob, AAD).unwrap(), KEK);
    let wrong_id = format!(
        "pkcs11:token=sealfs;id=%00?module-path={}",
        hsm.module().display()
    );
    let err = Pkcs11Token::open(&uri(&wrong_id), SoftHsm::USER_PIN).unwrap_err();
    assert!(matches!(err, Pkcs11Error::KeyNotFound { .. }), "{err:?}");

    // Same label twice is refused; wrap without a selected key is KeyNotFound.
    let err = t.generate_key("kek").unwrap_err();
    assert!(matches!(err, Pkcs11Error::KeyExists { .. }), "{err:?}");
    let no_key = Pkcs11Token::open(&uri(&hsm.uri("sealfs", None)), SoftHsm::USER_PIN).unwrap();
    assert!(matches!(
        no_key.wrap(&KEK, AAD),
        Err(Pkcs11Error::KeyNotFound { .. })
    ));
}

#[test]
fn missing_module_is_its_own_error() {
    // Needs no token: the module path is wrong before anything else.
    for path in ["/nonexistent/libpkcs11.so", "/etc/hostname"] {
        let u = uri(&format!(
            "pkcs11:token=sealfs;object=kek?module-path={path}"
        ));
        let err = Pkcs11Token::open(&u, "1234").unwrap_err();
        assert!(
            matches!(err, Pkcs11Error::ModuleUnavailable { .. }),
            "{path}: {err:?}"
        );
        assert!(err.to_string().contains(path), "{err}");
    }
    let err = Pkcs11Token::open(&uri("pkcs11:token=sealfs;object=kek"), "1234").unwrap_err();
    assert!(
        matches!(err, Pkcs11Error::ModuleUnavailable { .. }),
        "{err:?}"
    );
}

#[test]
fn tampered_blob_and_other_aad_fail_to_unwrap() {
    let Some(hsm) = SoftHsm::start() else { return };
    let t = token_with_key(&hsm);
    let blob = t.wrap(&KEK, AAD).unwrap();
    // Every byte position matters: flip one bit in each region.
    for pos in [1, 12, 13, 30, 44, 45, BLOB_LEN - 1] {
        let mut bad = blob.clone();
        bad[pos] ^= 0x01;
        let err = t.unwrap(&bad, AAD).unwrap_err();
        assert!(
            matches!(err, Pkcs11Error::UnwrapFailed { .. }),
            "byte {pos}: {err:?}"
        );
    }
    let err = t.unwrap(&blob, b"volume-id:9999;slot:0").unwrap_err();
    assert!(matches!(err, Pkcs11Error::UnwrapFailed { .. }), "{err:?}");
    let err = t.unwrap(&blob[..BLOB_LEN - 1], AAD).unwrap_err();
    assert!(matches!(err, Pkcs11Error::UnwrapFailed { .. }), "{err:?}");
    let mut v2 = blob.clone();
    v2[0] = 2;
    assert!(matches!(
        t.unwrap(&v2, AAD),
        Err(Pkcs11Error::UnwrapFailed { .. })
    ));

    // A different key on the same token does not open it either.
    let mut t2 = Pkcs11Token::open(&uri(&hsm.uri("sealfs", None)), SoftHsm::USER_PIN).unwrap();
    t2.generate_key("other").unwrap();
    assert!(matches!(
        t2.unwrap(&blob, AAD),
        Err(Pkcs11Error::UnwrapFailed { .. })
    ));
    // And the original still opens.
    assert_eq!(*t.unwrap(&blob, AAD).unwrap(), KEK);
}

#[test]
fn pin_from_env_source() {
    let Some(hsm) = SoftHsm::start() else { return };
    hsm.init_token("sealfs");
    let var = "SEALFS_TEST_PKCS11_PIN";
    std::env::set_var(var, SoftHsm::USER_PIN);
    let u = uri(&format!("{}&pin-source=env:{var}", hsm.uri("sealfs", None)));
    assert_eq!(u.pin, Some(SecretSource::Env(var.into())));
    let pin = u.pin.as_ref().unwrap().resolve().unwrap();
    std::env::remove_var(var);
    Pkcs11Token::open(&u, &pin).unwrap();
}
