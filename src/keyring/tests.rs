use super::provider::keyfile::KeyFile;
use super::provider::passphrase::Passphrase;
use super::provider::recovery::RecoveryKey;
use super::*;
use crate::crypto::Argon2Params;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use zeroize::Zeroizing;

fn dirfd(d: &tempfile::TempDir) -> OwnedFd {
    sys::open_dir_path(d.path()).unwrap()
}

fn pw(s: &str) -> UnlockSecret {
    UnlockSecret::Passphrase(Zeroizing::new(s.as_bytes().to_vec()))
}

const P: Argon2Params = Argon2Params {
    memory_kib: 8192,
    iterations: 1,
    parallelism: 1,
};

fn pass(s: &str) -> Passphrase {
    Passphrase::new(Zeroizing::new(s.as_bytes().to_vec())).with_params(P)
}

#[test]
fn store_load_and_fallback() {
    let d = tempfile::tempdir().unwrap();
    let mut k = Keyring::create([1; 16], &[(&pass("secret"), "main")]).unwrap();
    k.store(dirfd(&d).as_fd()).unwrap();
    let back = Keyring::load(dirfd(&d).as_fd(), &pw("secret")).unwrap();
    assert_eq!(back.primary(), 1);
    assert_eq!(back.layout(), 2);
    assert_eq!(back.unlocked_by().unwrap().slot, Some(1));
    assert!(back.wrapper(1, RecordKind::File).is_some());
    assert!(back.wrapper(2, RecordKind::File).is_none());
    assert!(matches!(
        Keyring::load(dirfd(&d).as_fd(), &pw("wrong")),
        Err(KeyringError::Format(KeyringFormatError::Unlock))
    ));
    // a damaged primary falls back to the backup
    fs::write(d.path().join(KEYRING_FILE), b"garbage").unwrap();
    assert!(Keyring::load(dirfd(&d).as_fd(), &pw("secret")).is_ok());
    let dbg = format!("{back:?} {:?}", pw("secret"));
    assert!(!dbg.contains("secret"));
}

#[test]
fn lifecycle_rotate_retire_delete_destroy() {
    let d = tempfile::tempdir().unwrap();
    let mut k = Keyring::create([1; 16], &[(&pass("secret"), "")]).unwrap();
    assert_eq!(k.rotate().unwrap(), 2);
    assert_eq!(k.rotate().unwrap(), 3);
    assert_eq!(k.primary(), 3);
    assert!(k.wrapper(1, RecordKind::File).is_some());
    assert!(k.retire_below(4).is_err(), "primary cannot be retired");
    assert_eq!(k.retire_below(2).unwrap(), vec![1]);
    assert!(k.wrapper(1, RecordKind::File).is_none());
    assert!(
        k.schedule_deletion(2, 100).is_err(),
        "only retired versions"
    );
    k.schedule_deletion(1, 100).unwrap();
    assert!(k.destroy_due(99).is_empty());
    k.set_disabled(true);
    k.store(dirfd(&d).as_fd()).unwrap();
    let mut back = Keyring::load(dirfd(&d).as_fd(), &pw("secret")).unwrap();
    assert!(back.disabled());
    assert_eq!(back.versions()[0].state, KeyState::PendingDeletion);
    assert!(back.destruction_due(100));
    assert_eq!(back.destroy_due(100), vec![1]);
    assert_eq!(back.versions()[0].key.expose(), &[0u8; 32]);
    assert!(back.wrapper(1, RecordKind::File).is_none());
    assert!(back.wrapper(2, RecordKind::File).is_some());
}

#[test]
fn slots_add_remove_and_each_unlocks() {
    let d = tempfile::tempdir().unwrap();
    let mut k = Keyring::create([1; 16], &[(&pass("one"), "first")]).unwrap();
    let kf = KeyFile::new(SecretKey::from_bytes([9; 32]));
    let rk = RecoveryKey::generate().unwrap();
    assert_eq!(k.add_slot(&kf, "file").unwrap().id, 2);
    assert_eq!(k.add_slot(&rk, "recovery").unwrap().id, 3);
    k.store(dirfd(&d).as_fd()).unwrap();
    for (u, slot) in [(&pass("one") as &dyn Unlocker, 1), (&kf, 2), (&rk, 3)] {
        let back = Keyring::load(dirfd(&d).as_fd(), u).unwrap();
        assert_eq!(back.unlocked_by().unwrap().slot, Some(slot));
    }
    let mut k = Keyring::load(dirfd(&d).as_fd(), &kf).unwrap();
    k.remove_slot(1).unwrap();
    k.remove_slot(2).unwrap();
    assert!(k.remove_slot(3).is_err(), "the last slot stays");
    k.store(dirfd(&d).as_fd()).unwrap();
    // The removed secrets no longer open this keyring.
    assert!(matches!(
        Keyring::load(dirfd(&d).as_fd(), &kf),
        Err(KeyringError::NoSlot { .. })
    ));
    assert!(Keyring::load(dirfd(&d).as_fd(), &rk).is_ok());
    let slots = k.slots();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].provider, "recovery-key");
    assert_eq!(
        slots::slots_of(&read_copy(dirfd(&d).as_fd(), KEYRING_FILE).unwrap())
            .unwrap()
            .unwrap(),
        slots
    );
}

#[test]
fn edited_slot_table_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let mut k = Keyring::create([1; 16], &[(&pass("one"), "laptop")]).unwrap();
    k.add_slot(&pass("two"), "desk").unwrap();
    k.store(dirfd(&d).as_fd()).unwrap();
    let mut bytes = read_copy(dirfd(&d).as_fd(), KEYRING_FILE).unwrap();
    let at = bytes.windows(4).position(|w| w == b"desk").unwrap();
    bytes[at] = b'D';
    // Slot 1 still opens its KEK, but the body no longer opens: refused.
    assert!(matches!(
        Keyring::unlock(&bytes, &pass("one")),
        Err(KeyringError::Format(KeyringFormatError::Unlock))
    ));
}

#[test]
fn change_secret_keeps_keys() {
    let d = tempfile::tempdir().unwrap();
    let mut k = Keyring::create([1; 16], &[(&pass("old"), "main")]).unwrap();
    let key1 = k.versions()[0].key.expose().to_owned();
    k.unlocked_by = Some(UnlockedBy {
        slot: Some(1),
        provider: "passphrase".into(),
        label: "main".into(),
        description: String::new(),
    });
    assert!(k.change_secret(&pw("new"), P).unwrap().is_none());
    k.store(dirfd(&d).as_fd()).unwrap();
    assert!(Keyring::load(dirfd(&d).as_fd(), &pw("old")).is_err());
    let back = Keyring::load(dirfd(&d).as_fd(), &pw("new")).unwrap();
    assert_eq!(back.versions()[0].key.expose(), &key1);
    assert_eq!(back.slots()[0].label, "main");
}

/// A layout-1 keyring, as `sealfs init` wrote them before keyslots.
fn v1_keyring(d: &tempfile::TempDir, secret: &str) {
    let h = kfmt::V1Header {
        kek: KekSource::Passphrase(P),
        salt: [4; 16],
        volume_id: [1; 16],
        generation: 5,
    };
    let kek = crate::crypto::stretch_passphrase(secret.as_bytes(), &h.salt, P).unwrap();
    let body = KeyringBody::single(
        1,
        0,
        vec![MasterKeyVersion {
            version: 1,
            state: KeyState::Enabled,
            created: 1,
            deletion_due: 0,
            key: SecretKey::from_bytes([7; 32]),
        }],
        1,
    );
    let bytes = kfmt::v1::seal(&body, &h, &kek).unwrap();
    for n in [KEYRING_FILE, KEYRING_BACKUP] {
        fs::write(d.path().join(n), &bytes).unwrap();
    }
}

#[test]
fn layout_one_opens_and_upgrades_with_a_new_kek() {
    let d = tempfile::tempdir().unwrap();
    v1_keyring(&d, "pw");
    let mut k = Keyring::load(dirfd(&d).as_fd(), &pw("pw")).unwrap();
    assert_eq!(k.layout(), 1);
    assert!(k.unlocked_by().unwrap().slot.is_none());
    assert!(matches!(
        Keyring::load(
            dirfd(&d).as_fd(),
            &KeyFile::new(SecretKey::from_bytes([1; 32]))
        ),
        Err(KeyringError::WrongSecretKind("passphrase"))
    ));
    assert!(matches!(
        k.add_slot(&pass("x"), ""),
        Err(KeyringError::NotUpgraded)
    ));
    let old_kek = k.kek.expose().to_owned();
    k.upgrade(&pass("pw"), "upgraded").unwrap();
    assert_ne!(k.kek.expose(), &old_kek[..], "a new random KEK");
    k.store(dirfd(&d).as_fd()).unwrap();
    let back = Keyring::load(dirfd(&d).as_fd(), &pw("pw")).unwrap();
    assert_eq!(back.layout(), 2);
    assert_eq!(back.generation(), 6);
    assert_eq!(back.versions()[0].key.expose(), &[7u8; 32]);
}

#[test]
fn key_file_secret_on_layout_one() {
    let kf = UnlockSecret::KeyFile(SecretKey::from_bytes([9; 32]));
    let h = kfmt::V1Header {
        kek: KekSource::KeyFile,
        salt: [4; 16],
        volume_id: [1; 16],
        generation: 0,
    };
    let kek = crate::crypto::derive_key(&[9; 32], &h.salt, b"sealfs v1 kek from key file");
    let body = KeyringBody::single(
        1,
        0,
        vec![MasterKeyVersion {
            version: 1,
            state: KeyState::Enabled,
            created: 1,
            deletion_due: 0,
            key: SecretKey::generate().unwrap(),
        }],
        1,
    );
    let bytes = kfmt::v1::seal(&body, &h, &kek).unwrap();
    assert!(Keyring::unlock(&bytes, &kf).is_ok());
    assert!(matches!(
        Keyring::unlock(&bytes, &pw("x")),
        Err(KeyringError::WrongSecretKind(_))
    ));
    let other = UnlockSecret::KeyFile(SecretKey::from_bytes([8; 32]));
    assert!(Keyring::unlock(&bytes, &other).is_err());
}
