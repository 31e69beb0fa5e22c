//! The attributes the mount root presents (mode, owner, group), kept apart
//! from the cipher directory's own, so that CIPHERDIR can stay mode 0700
//! while the mount's root shows 0755 (or whatever chmod/chown set on it)
//! to the users of an `allow_other` mount. docs/FORMAT.md §5.1.
//!
//! Owns: the bytes of `sealfs.root` (sealed under a key derived from the
//! root directory's key, bound to the volume id and the root directory
//! id) and their decoding.
//! Must never: perform I/O, or return attributes that did not authenticate.

use crate::crypto::{random_nonce, CryptoError, SecretKey, NONCE_LEN, TAG_LEN};

/// First bytes of `sealfs.root`.
pub const MAGIC: &[u8; 8] = b"sealfs.R";
/// Record version.
pub const VERSION: u16 = 1;
/// Bytes before the nonce (magic, version, reserved).
const FIXED: usize = 12;
/// Plaintext body: mode, uid, gid, reserved (u32 each).
const BODY: usize = 16;
/// The whole record.
pub const LEN: usize = FIXED + NONCE_LEN + BODY + TAG_LEN;

const KEY_LABEL: &[u8] = b"sealfs v1 root attributes";
const AAD_LABEL: &[u8] = b"sealfs:root-attrs:v1";

/// Errors reading `sealfs.root`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootAttrsError {
    /// Wrong size, magic or version.
    #[error("sealfs.root is not a root attribute record")]
    Malformed,
    /// Does not authenticate under this volume's root directory key.
    #[error("sealfs.root does not authenticate (edited, or another volume's)")]
    Tampered,
}

/// The mount root's presented attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootAttrs {
    /// Permission bits, with set-user-ID, set-group-ID and sticky (0o7777).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

fn aad(fixed: &[u8], volume_id: &[u8; 16], dir_id: &[u8; 16]) -> Vec<u8> {
    let mut a = AAD_LABEL.to_vec();
    a.extend_from_slice(fixed);
    a.extend_from_slice(volume_id);
    a.extend_from_slice(dir_id);
    a
}

impl RootAttrs {
    /// Seals the attributes under the root directory's key `dir_key`.
    pub fn seal(
        &self,
        dir_key: &SecretKey,
        volume_id: &[u8; 16],
        dir_id: &[u8; 16],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        let nonce = random_nonce()?;
        let mut body = [0u8; BODY];
        body[0..4].copy_from_slice(&(self.mode & 0o7777).to_le_bytes());
        body[4..8].copy_from_slice(&self.uid.to_le_bytes());
        body[8..12].copy_from_slice(&self.gid.to_le_bytes());
        let key = dir_key.derive(dir_id, KEY_LABEL).cipher();
        let tag = key.seal_in_place(&nonce, &aad(&out, volume_id, dir_id), &mut body);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a record sealed by [`RootAttrs::seal`].
    pub fn open(
        bytes: &[u8],
        dir_key: &SecretKey,
        volume_id: &[u8; 16],
        dir_id: &[u8; 16],
    ) -> Result<RootAttrs, RootAttrsError> {
        if bytes.len() != LEN
            || &bytes[0..8] != MAGIC
            || bytes[8..10] != VERSION.to_le_bytes()
            || bytes[10..12] != [0, 0]
        {
            return Err(RootAttrsError::Malformed);
        }
        let nonce: [u8; NONCE_LEN] = bytes[FIXED..FIXED + NONCE_LEN].try_into().expect("nonce");
        let b = FIXED + NONCE_LEN;
        let mut body: [u8; BODY] = bytes[b..b + BODY].try_into().expect("body");
        let tag: [u8; TAG_LEN] = bytes[b + BODY..].try_into().expect("tag");
        let key = dir_key.derive(dir_id, KEY_LABEL).cipher();
        key.open_in_place(
            &nonce,
            &aad(&bytes[..FIXED], volume_id, dir_id),
            &mut body,
            &tag,
        )
        .map_err(|_| RootAttrsError::Tampered)?;
        let u = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().expect("4 bytes"));
        if u(0) & !0o7777 != 0 || u(12) != 0 {
            return Err(RootAttrsError::Tampered);
        }
        Ok(RootAttrs {
            mode: u(0),
            uid: u(4),
            gid: u(8),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = SecretKey::from_bytes([3; 32]);
        let a = RootAttrs {
            mode: 0o2755,
            uid: 1000,
            gid: 100,
        };
        let b = a.seal(&k, &[1; 16], &[2; 16]).unwrap();
        assert_eq!(b.len(), LEN);
        assert_eq!(RootAttrs::open(&b, &k, &[1; 16], &[2; 16]), Ok(a));
        // Another volume, another root directory, another key: refused.
        assert_eq!(
            RootAttrs::open(&b, &k, &[9; 16], &[2; 16]),
            Err(RootAttrsError::Tampered)
        );
        assert_eq!(
            RootAttrs::open(&b, &k, &[1; 16], &[9; 16]),
            Err(RootAttrsError::Tampered)
        );
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 1;
            assert!(RootAttrs::open(&t, &k, &[1; 16], &[2; 16]).is_err(), "{i}");
        }
        assert_eq!(
            RootAttrs::open(&b[1..], &k, &[1; 16], &[2; 16]),
            Err(RootAttrsError::Malformed)
        );
    }
}
