//! Keyring layout 1 (frozen): a fixed 72-byte header naming how the KEK
//! is derived from the unlock secret (Argon2id parameters and salt, or a
//! key file), and a body of fixed-size entries for one key's versions.
//! docs/FORMAT.md §2.1.
//!
//! Owns: these bytes, unchanged since format version 1 (the fixture
//! `tests/fixtures/v1` pins them).
//! Must never: do I/O, or hold a second key, an anchor or subtree
//! assignments (layout 2 does).

use zeroize::Zeroizing;

use super::{
    KeyState, KeyringBody, KeyringFormatError, MasterKeyVersion, DEFAULT_KEY_ID, MAGIC,
    MAX_VERSIONS,
};
use crate::crypto::{random_nonce, Argon2Params, SecretKey, KEY_LEN, NONCE_LEN, TAG_LEN};

/// The layout version field of a v1 keyring.
pub const VERSION: u16 = 1;
/// Length of the v1 header (the AAD of its body).
pub const HEADER_LEN: usize = 72;
const BODY_HEAD: usize = 12;
const ENTRY_LEN: usize = 4 + 1 + 8 + 8 + KEY_LEN;
/// How the KEK is derived; stored in the keyring header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KekSource {
    /// Argon2id over a passphrase with these parameters.
    Passphrase(Argon2Params),
    /// HKDF over a 32-byte key file.
    KeyFile,
}

/// The cleartext, authenticated header of a v1 keyring file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V1Header {
    /// KEK derivation.
    pub kek: KekSource,
    /// Salt for the KEK derivation.
    pub salt: [u8; 16],
    /// Volume id.
    pub volume_id: [u8; 16],
    /// Incremented on every rewrite.
    pub generation: u32,
}

/// Parses the cleartext header (to learn how to derive the KEK).
pub fn parse_header(bytes: &[u8]) -> Result<V1Header, KeyringFormatError> {
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(KeyringFormatError::Malformed);
    }
    if &bytes[..8] != MAGIC {
        return Err(KeyringFormatError::BadMagic);
    }
    let v = u16::from_le_bytes([bytes[8], bytes[9]]);
    if v != VERSION {
        return Err(KeyringFormatError::UnsupportedVersion(v));
    }
    let u32at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let kek = match bytes[10] {
        1 => KekSource::Passphrase(Argon2Params {
            memory_kib: u32at(12),
            iterations: u32at(16),
            parallelism: u32at(20),
        }),
        2 => KekSource::KeyFile,
        _ => return Err(KeyringFormatError::Malformed),
    };
    if let KekSource::Passphrase(p) = kek {
        super::check_kdf_ceiling(p)?;
    }
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&bytes[24..40]);
    let mut volume_id = [0u8; 16];
    volume_id.copy_from_slice(&bytes[40..56]);
    Ok(V1Header {
        kek,
        salt,
        volume_id,
        generation: u32at(56),
    })
}

/// Seals a keyring body under `kek`. The body must fit layout 1: one key
/// (id 1), no subtree assignment, no anchor.
pub fn seal(
    body: &KeyringBody,
    header: &V1Header,
    kek: &SecretKey,
) -> Result<Vec<u8>, KeyringFormatError> {
    if body.keys.len() != 1
        || body.keys[0].id != DEFAULT_KEY_ID
        || !body.assignments.is_empty()
        || body.anchor.is_some()
    {
        return Err(KeyringFormatError::Invalid(
            "a layout-1 keyring holds one key and no anchor (upgrade the volume)".into(),
        ));
    }
    let key = &body.keys[0];
    let nonce = random_nonce()?;
    let mut out = Vec::with_capacity(HEADER_LEN + 8 + key.versions.len() * ENTRY_LEN + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let (kind, p) = match header.kek {
        KekSource::Passphrase(p) => (1u8, p),
        KekSource::KeyFile => (
            2u8,
            Argon2Params {
                memory_kib: 0,
                iterations: 0,
                parallelism: 0,
            },
        ),
    };
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&p.memory_kib.to_le_bytes());
    out.extend_from_slice(&p.iterations.to_le_bytes());
    out.extend_from_slice(&p.parallelism.to_le_bytes());
    out.extend_from_slice(&header.salt);
    out.extend_from_slice(&header.volume_id);
    out.extend_from_slice(&header.generation.to_le_bytes());
    out.extend_from_slice(&nonce);
    debug_assert_eq!(out.len(), HEADER_LEN);
    let mut plain = Zeroizing::new(Vec::with_capacity(
        BODY_HEAD + key.versions.len() * ENTRY_LEN,
    ));
    plain.extend_from_slice(&key.primary.to_le_bytes());
    plain.extend_from_slice(&body.flags.to_le_bytes());
    plain.extend_from_slice(&(key.versions.len() as u32).to_le_bytes());
    for v in &key.versions {
        plain.extend_from_slice(&v.version.to_le_bytes());
        plain.push(v.state.to_byte());
        plain.extend_from_slice(&v.created.to_le_bytes());
        plain.extend_from_slice(&v.deletion_due.to_le_bytes());
        plain.extend_from_slice(v.key.expose());
    }
    let aad: Vec<u8> = out.clone();
    let tag = kek.cipher().seal_in_place(&nonce, &aad, &mut plain);
    out.extend_from_slice(&plain);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a keyring file with `kek`.
pub fn open(bytes: &[u8], kek: &SecretKey) -> Result<KeyringBody, KeyringFormatError> {
    parse_header(bytes)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[60..72]);
    let body_end = bytes.len() - TAG_LEN;
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&bytes[body_end..]);
    let mut plain = Zeroizing::new(bytes[HEADER_LEN..body_end].to_vec());
    kek.cipher()
        .open_in_place(&nonce, &bytes[..HEADER_LEN], &mut plain, &tag)
        .map_err(|_| KeyringFormatError::Unlock)?;
    if plain.len() < BODY_HEAD {
        return Err(KeyringFormatError::Malformed);
    }
    let primary = u32::from_le_bytes(plain[0..4].try_into().expect("4 bytes"));
    let flags = u32::from_le_bytes(plain[4..8].try_into().expect("4 bytes"));
    let count = u32::from_le_bytes(plain[8..12].try_into().expect("4 bytes")) as usize;
    if count > MAX_VERSIONS || plain.len() != BODY_HEAD + count * ENTRY_LEN {
        return Err(KeyringFormatError::Malformed);
    }
    let mut versions = Vec::with_capacity(count);
    for i in 0..count {
        let e = &plain[BODY_HEAD + i * ENTRY_LEN..BODY_HEAD + (i + 1) * ENTRY_LEN];
        let version = u32::from_le_bytes(e[0..4].try_into().expect("4 bytes"));
        let state = KeyState::from_byte(e[4]).ok_or(KeyringFormatError::Malformed)?;
        let created = u64::from_le_bytes(e[5..13].try_into().expect("8 bytes"));
        let deletion_due = u64::from_le_bytes(e[13..21].try_into().expect("8 bytes"));
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&e[21..21 + KEY_LEN]);
        versions.push(MasterKeyVersion {
            version,
            state,
            created,
            deletion_due,
            key: SecretKey::from_bytes(*k),
        });
    }
    if !versions.iter().any(|v| v.version == primary) {
        return Err(KeyringFormatError::Malformed);
    }
    let created = versions.first().map_or(0, |v| v.created);
    Ok(KeyringBody::single(primary, flags, versions, created))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::keyring::FLAG_DISABLED;
    use proptest::prelude::*;

    fn sample() -> (KeyringBody, V1Header, SecretKey) {
        let body = KeyringBody::single(
            2,
            FLAG_DISABLED,
            vec![
                MasterKeyVersion {
                    version: 1,
                    state: KeyState::PendingDeletion,
                    created: 10,
                    deletion_due: 99,
                    key: SecretKey::generate().unwrap(),
                },
                MasterKeyVersion {
                    version: 2,
                    state: KeyState::Enabled,
                    created: 20,
                    deletion_due: 0,
                    key: SecretKey::generate().unwrap(),
                },
            ],
            10,
        );
        let header = V1Header {
            kek: KekSource::Passphrase(Argon2Params {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            }),
            salt: [4; 16],
            volume_id: [5; 16],
            generation: 7,
        };
        (body, header, SecretKey::generate().unwrap())
    }

    #[test]
    fn round_trip() {
        let (body, header, kek) = sample();
        let bytes = seal(&body, &header, &kek).unwrap();
        assert_eq!(parse_header(&bytes).unwrap(), header);
        let back = open(&bytes, &kek).unwrap();
        let (k0, b0) = (&back.keys[0], &body.keys[0]);
        assert_eq!(k0.primary, 2);
        assert_eq!(back.flags, FLAG_DISABLED);
        assert_eq!(k0.versions[0].state, KeyState::PendingDeletion);
        assert_eq!(k0.versions[0].deletion_due, 99);
        assert_eq!(k0.versions.len(), 2);
        assert_eq!(k0.versions[1].key.expose(), b0.versions[1].key.expose());
        // no key bytes in the file
        let k = b0.versions[0].key.expose();
        assert!(!bytes.windows(32).any(|w| w == k));
    }

    #[test]
    fn wrong_kek_and_tamper() {
        let (body, header, kek) = sample();
        let bytes = seal(&body, &header, &kek).unwrap();
        assert_eq!(
            open(&bytes, &SecretKey::generate().unwrap()).unwrap_err(),
            KeyringFormatError::Unlock
        );
        let mut t = bytes.clone();
        t[14] ^= 1; // argon2 params in header are authenticated
        assert_eq!(open(&t, &kek).unwrap_err(), KeyringFormatError::Unlock);
        assert_eq!(
            open(&bytes[..50], &kek).unwrap_err(),
            KeyringFormatError::Malformed
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_header(&bytes);
            let _ = open(&bytes, &SecretKey::from_bytes([0; 32]));
        }
    }
}
