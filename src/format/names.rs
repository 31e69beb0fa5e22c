//! File-name and symlink-target encryption for one directory.
//!
//! Owns: deterministic authenticated name encryption (AES-256-GCM-SIV with a
//! fixed nonce under a per-directory name key, AAD = directory id), the
//! padding of names to 16 bytes for volumes with the `padded-names`
//! feature ([`NameScheme`]), the base64url encoding for the backing
//! filesystem, the long-name scheme, and sealing of symlink targets.
//! Must never: touch the filesystem; it returns the names and sidecar bytes
//! the volume layer must write.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::crypto::{random_nonce, SealingKey, SecretKey, NONCE_LEN, TAG_LEN};

/// Longest backing name we produce directly; longer encodings use the long form.
pub const MAX_BACKING_NAME: usize = 255;
/// Longest plaintext name accepted (as on ext4).
pub const MAX_NAME: usize = 255;
pub use crate::format::reserved::{LONG_NAME_PREFIX, LONG_NAME_SIDECAR_SUFFIX};
/// Longest long-name sidecar read (the longest encoding is 363 bytes).
pub const MAX_SIDECAR: usize = 1024;
/// Longest symlink target accepted (its sealed, encoded form must fit PATH_MAX).
pub const MAX_SYMLINK_TARGET: usize = 3000;

const NAME_AAD: &[u8] = b"sealfs:name:v1";
/// AAD label of padded names: a name sealed under one scheme never opens
/// under the other (docs/FORMAT.md §7.1).
const PADDED_NAME_AAD: &[u8] = b"sealfs:name:v2";
const LINK_AAD: &[u8] = b"sealfs:symlink:v1";
/// Padded names are a multiple of this many bytes before sealing.
pub const NAME_PAD: usize = 16;

/// How names are sealed in a volume: its format feature `padded-names`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameScheme {
    /// Format 1 as first released: the name as it is; its exact length
    /// shows in the encoded name.
    #[default]
    Exact,
    /// The name padded to a multiple of [`NAME_PAD`] bytes before sealing
    /// (PKCS#7: 1 to 16 bytes, each holding the pad's length, so a name
    /// that is already a multiple gets 16 more), under its own AAD label:
    /// only the length rounded up to 16 bytes shows.
    Padded16,
}

/// `name` padded to the next multiple of [`NAME_PAD`] (always 1..=16 bytes
/// of padding, each the pad length).
pub fn pad_name(name: &[u8]) -> Vec<u8> {
    let n = NAME_PAD - name.len() % NAME_PAD;
    let mut out = Vec::with_capacity(name.len() + n);
    out.extend_from_slice(name);
    out.resize(name.len() + n, n as u8);
    out
}

/// The name in a padded plaintext, or None if the padding is not exactly
/// what [`pad_name`] writes.
pub fn unpad_name(padded: &[u8]) -> Option<&[u8]> {
    let n = *padded.last()? as usize;
    if n == 0 || n > NAME_PAD || n > padded.len() || padded.len() % NAME_PAD != 0 {
        return None;
    }
    let (name, pad) = padded.split_at(padded.len() - n);
    pad.iter().all(|b| *b as usize == n).then_some(name)
}

/// Errors of name handling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Plaintext name empty, `.`/`..`, contains `/` or NUL, or too long.
    #[error("invalid plaintext name")]
    Invalid,
    /// Name longer than [`MAX_NAME`] bytes.
    #[error("name too long")]
    TooLong,
    /// The encoded name is not valid base64url or too short.
    #[error("encrypted name is malformed")]
    Malformed,
    /// The encrypted name does not authenticate in this directory.
    #[error("encrypted name does not authenticate in this directory")]
    Tampered,
}

/// How a plaintext name is stored in the backing directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingName {
    /// The entry name in the backing directory.
    pub entry: String,
    /// For long names: the sidecar file name and its content (the full encoded name).
    pub sidecar: Option<(String, String)>,
}

/// Name and symlink-target cipher of one directory, derived from its directory key.
#[derive(Clone, Debug)]
pub struct NameCipher {
    names: SealingKey,
    links: SealingKey,
    dir_id: [u8; 16],
    scheme: NameScheme,
}

fn name_aad(scheme: NameScheme, dir_id: &[u8; 16]) -> [u8; 30] {
    let mut a = [0u8; 30];
    a[..14].copy_from_slice(match scheme {
        NameScheme::Exact => NAME_AAD,
        NameScheme::Padded16 => PADDED_NAME_AAD,
    });
    a[14..].copy_from_slice(dir_id);
    a
}

impl NameCipher {
    /// The cipher for the directory with `dir_id` and directory key
    /// `dir_key`, with names as format 1 first sealed them
    /// ([`NameScheme::Exact`]).
    pub fn new(dir_key: &SecretKey, dir_id: [u8; 16]) -> Self {
        Self::with_scheme(dir_key, dir_id, NameScheme::Exact)
    }

    /// The cipher for a directory of a volume whose names use `scheme`.
    pub fn with_scheme(dir_key: &SecretKey, dir_id: [u8; 16], scheme: NameScheme) -> Self {
        NameCipher {
            names: dir_key.derive(&dir_id, b"sealfs v1 names").cipher(),
            links: dir_key
                .derive(&dir_id, b"sealfs v1 symlink targets")
                .cipher(),
            dir_id,
            scheme,
        }
    }

    /// How this cipher seals names.
    pub fn scheme(&self) -> NameScheme {
        self.scheme
    }

    /// The directory id this cipher belongs to.
    pub fn dir_id(&self) -> [u8; 16] {
        self.dir_id
    }

    /// Encrypts a plaintext name to its backing form.
    pub fn encrypt_name(&self, name: &[u8]) -> Result<BackingName, NameError> {
        validate_name(name)?;
        let mut buf = match self.scheme {
            NameScheme::Exact => name.to_vec(),
            NameScheme::Padded16 => pad_name(name),
        };
        buf.reserve(TAG_LEN);
        let tag = self.names.seal_in_place(
            &[0u8; NONCE_LEN],
            &name_aad(self.scheme, &self.dir_id),
            &mut buf,
        );
        buf.extend_from_slice(&tag);
        let full = URL_SAFE_NO_PAD.encode(&buf);
        if full.len() <= MAX_BACKING_NAME {
            return Ok(BackingName {
                entry: full,
                sidecar: None,
            });
        }
        let entry = long_entry_name(&full);
        let sidecar = crate::format::reserved::sidecar_name(&entry);
        Ok(BackingName {
            entry,
            sidecar: Some((sidecar, full)),
        })
    }

    /// Decrypts a short backing name, or the full encoded form read from a
    /// long name's sidecar.
    pub fn decrypt_name(&self, encoded: &str) -> Result<Vec<u8>, NameError> {
        let mut buf = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| NameError::Malformed)?;
        if buf.len() <= TAG_LEN {
            return Err(NameError::Malformed);
        }
        let split = buf.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&buf[split..]);
        buf.truncate(split);
        self.names
            .open_in_place(
                &[0u8; NONCE_LEN],
                &name_aad(self.scheme, &self.dir_id),
                &mut buf,
                &tag,
            )
            .map_err(|_| NameError::Tampered)?;
        if self.scheme == NameScheme::Padded16 {
            let n = unpad_name(&buf).ok_or(NameError::Tampered)?.len();
            buf.truncate(n);
        }
        validate_name(&buf).map_err(|_| NameError::Tampered)?;
        Ok(buf)
    }

    /// Seals a symlink target into the text stored as the backing symlink's target.
    pub fn seal_symlink_target(&self, target: &[u8]) -> Result<String, NameError> {
        if target.is_empty() || target.len() > MAX_SYMLINK_TARGET {
            return Err(NameError::TooLong);
        }
        let nonce = random_nonce().map_err(|_| NameError::Invalid)?;
        let mut buf = target.to_vec();
        let tag = self
            .links
            .seal_in_place(&nonce, &link_aad(&self.dir_id), &mut buf);
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a symlink target sealed by [`NameCipher::seal_symlink_target`].
    pub fn open_symlink_target(&self, stored: &[u8]) -> Result<Vec<u8>, NameError> {
        let raw = URL_SAFE_NO_PAD
            .decode(stored)
            .map_err(|_| NameError::Malformed)?;
        if raw.len() <= NONCE_LEN + TAG_LEN {
            return Err(NameError::Malformed);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&raw[raw.len() - TAG_LEN..]);
        let mut buf = raw[NONCE_LEN..raw.len() - TAG_LEN].to_vec();
        self.links
            .open_in_place(&nonce, &link_aad(&self.dir_id), &mut buf, &tag)
            .map_err(|_| NameError::Tampered)?;
        Ok(buf)
    }
}

fn link_aad(dir_id: &[u8; 16]) -> Vec<u8> {
    let mut a = LINK_AAD.to_vec();
    a.extend_from_slice(dir_id);
    a
}

/// The backing entry name for a long encoded name.
pub fn long_entry_name(full_encoded: &str) -> String {
    let h = Sha256::digest(full_encoded.as_bytes());
    format!("{LONG_NAME_PREFIX}{}", URL_SAFE_NO_PAD.encode(h))
}

fn validate_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(NameError::Invalid);
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong);
    }
    Ok(())
}

/// What a backing directory entry is, judged by its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryClass {
    /// A short encrypted name.
    Short,
    /// A long-name entry whose full name is in its sidecar.
    Long,
    /// sealfs's own bookkeeping (directory metadata, sidecars, temp files, config).
    Internal,
}

/// Classifies a backing entry name.
pub fn classify_entry(name: &str) -> EntryClass {
    if crate::format::reserved::is_reserved(name) {
        EntryClass::Internal
    } else if name.starts_with(LONG_NAME_PREFIX) {
        EntryClass::Long
    } else {
        EntryClass::Short
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nc(id: u8) -> NameCipher {
        NameCipher::new(&SecretKey::from_bytes([id; 32]), [id; 16])
    }

    #[test]
    fn deterministic_per_directory() {
        let a = nc(1);
        let b = nc(2);
        assert_eq!(
            a.encrypt_name(b"hello").unwrap(),
            a.encrypt_name(b"hello").unwrap()
        );
        assert_ne!(
            a.encrypt_name(b"hello").unwrap(),
            b.encrypt_name(b"hello").unwrap()
        );
        let e = a.encrypt_name(b"hello").unwrap();
        assert_eq!(classify_entry(&e.entry), EntryClass::Short);
        assert_eq!(a.decrypt_name(&e.entry).unwrap(), b"hello");
        assert_eq!(b.decrypt_name(&e.entry), Err(NameError::Tampered));
        assert!(!e.entry.contains("hello"));
    }

    #[test]
    fn long_names_use_sidecar() {
        let a = nc(1);
        let name = vec![b'x'; 255];
        let e = a.encrypt_name(&name).unwrap();
        assert!(e.entry.len() <= 255);
        assert_eq!(classify_entry(&e.entry), EntryClass::Long);
        let (side, full) = e.sidecar.clone().unwrap();
        assert_eq!(classify_entry(&side), EntryClass::Internal);
        assert_eq!(long_entry_name(&full), e.entry);
        assert_eq!(a.decrypt_name(&full).unwrap(), name);
        assert_eq!(a.encrypt_name(&vec![b'x'; 256]), Err(NameError::TooLong));
        // the longest short name
        let mut n = 1;
        while a.encrypt_name(&vec![b'y'; n]).unwrap().sidecar.is_none() {
            n += 1;
        }
        assert!(n > 150, "short names up to {n}");
    }

    #[test]
    fn invalid_names() {
        let a = nc(1);
        for n in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert_eq!(a.encrypt_name(n), Err(NameError::Invalid));
        }
        assert_eq!(a.decrypt_name("!!!"), Err(NameError::Malformed));
        assert_eq!(a.decrypt_name("AAAA"), Err(NameError::Malformed));
    }

    #[test]
    fn symlink_targets() {
        let a = nc(1);
        let s = a.seal_symlink_target(b"../some/target").unwrap();
        assert!(!s.contains("target"));
        assert!(s.len() < 4096);
        assert_eq!(
            a.open_symlink_target(s.as_bytes()).unwrap(),
            b"../some/target"
        );
        assert_eq!(
            nc(2).open_symlink_target(s.as_bytes()),
            Err(NameError::Tampered)
        );
        let long = a
            .seal_symlink_target(&vec![b'a'; MAX_SYMLINK_TARGET])
            .unwrap();
        assert!(long.len() < 4096);
    }

    fn padded(id: u8) -> NameCipher {
        NameCipher::with_scheme(
            &SecretKey::from_bytes([id; 32]),
            [id; 16],
            NameScheme::Padded16,
        )
    }

    #[test]
    fn padding_is_unambiguous() {
        for len in 0..=300 {
            let name = vec![b'q'; len];
            let p = pad_name(&name);
            assert_eq!(p.len() % NAME_PAD, 0);
            assert!(p.len() > len && p.len() <= len + NAME_PAD);
            assert_eq!(unpad_name(&p), Some(&name[..]));
        }
        // A name that ends in what looks like padding keeps it.
        let tricky = b"ab\x01";
        assert_eq!(unpad_name(&pad_name(tricky)), Some(&tricky[..]));
        for bad in [&b""[..], b"abc", &[0u8; 16], &[17u8; 16], &[3u8; 15]] {
            assert_eq!(unpad_name(bad), None, "{bad:?}");
        }
        let mut p = pad_name(b"abc");
        p[14] = 12;
        assert_eq!(unpad_name(&p), None);
    }

    #[test]
    fn padded_names_show_only_their_length_in_16_byte_steps() {
        let a = padded(1);
        let len_of = |n: usize| {
            let e = a.encrypt_name(&vec![b'n'; n]).unwrap();
            e.sidecar.map_or(e.entry.len(), |(_, full)| full.len())
        };
        for n in 1..=255usize {
            // Every name of the same 16-byte step encodes to one length,
            // and the next step to a longer one.
            let step_start = (n / 16 * 16).max(1);
            assert_eq!(len_of(n), len_of(step_start), "{n}");
            if n % 16 == 15 && n < 255 {
                assert!(len_of(n + 1) > len_of(n), "{n}");
            }
        }
        // Round trips, up to the longest name, short and long forms.
        for n in [1usize, 15, 16, 17, 159, 160, 175, 176, 255] {
            let name = vec![b'z'; n];
            let e = a.encrypt_name(&name).unwrap();
            assert!(e.entry.len() <= MAX_BACKING_NAME);
            let enc = e.sidecar.as_ref().map_or(e.entry.clone(), |s| s.1.clone());
            assert_eq!(a.decrypt_name(&enc).unwrap(), name);
            // The long-name threshold follows the padded length: names up
            // to 159 bytes (160 padded) are stored as they are.
            assert_eq!(e.sidecar.is_some(), n >= 160, "{n}");
        }
    }

    #[test]
    fn a_name_of_one_scheme_never_opens_under_the_other() {
        let exact = nc(4);
        let pad = padded(4);
        let e = exact.encrypt_name(b"hello").unwrap();
        assert_eq!(pad.decrypt_name(&e.entry), Err(NameError::Tampered));
        let p = pad.encrypt_name(b"hello").unwrap();
        assert_eq!(exact.decrypt_name(&p.entry), Err(NameError::Tampered));
        assert_ne!(e.entry, p.entry);
    }

    proptest! {
        #[test]
        fn padded_name_round_trip(name in proptest::collection::vec(1u8..=255, 1..=255)) {
            prop_assume!(!name.contains(&b'/') && name != b"." && name != b"..");
            let a = padded(3);
            let e = a.encrypt_name(&name).unwrap();
            prop_assert!(e.entry.len() <= 255);
            let enc = e.sidecar.as_ref().map(|s| s.1.clone()).unwrap_or(e.entry.clone());
            prop_assert_eq!(a.decrypt_name(&enc).unwrap(), name);
        }

        #[test]
        fn name_round_trip(name in proptest::collection::vec(1u8..=255, 1..=255)) {
            prop_assume!(!name.contains(&b'/') && name != b"." && name != b"..");
            let a = nc(3);
            let e = a.encrypt_name(&name).unwrap();
            prop_assert!(e.entry.len() <= 255);
            prop_assert!(e.entry != "." && e.entry != "..");
            let enc = e.sidecar.as_ref().map(|s| s.1.clone()).unwrap_or(e.entry.clone());
            prop_assert_eq!(a.decrypt_name(&enc).unwrap(), name);
        }

        #[test]
        fn decrypt_never_panics(s in "\\PC{0,300}") {
            let _ = nc(3).decrypt_name(&s);
            let _ = nc(3).open_symlink_target(s.as_bytes());
        }
    }
}
