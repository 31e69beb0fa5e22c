//! The AEAD seam: what sealfs needs of an authenticated cipher, and the one
//! implementation it uses today, AES-256-GCM-SIV (RFC 8452).
//!
//! Owns: the [`Aead`] trait (keyed construction, detached seal and open in
//! place, the cipher's key, nonce and tag sizes) and [`AesGcmSiv`].
//! Everything above asks the cipher for its sizes ([`VolumeAead`]'s
//! constants feed [`crate::crypto::NONCE_LEN`] and
//! [`crate::crypto::TAG_LEN`], which the formats use), so another cipher is
//! one more `impl Aead` here plus the format feature flag that selects it.
//!
//! Must never: compare tags itself (the cipher crate does, in constant
//! time), choose nonces (callers pass CSPRNG nonces or, for names, the
//! deterministic scheme of docs/FORMAT.md §7), do I/O, or print key bytes.

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};

use super::CryptoError;

/// An authenticated cipher with associated data, used with detached tags.
pub trait Aead: Clone + Send + Sync + 'static {
    /// Key length in bytes.
    const KEY_LEN: usize;
    /// Nonce length in bytes.
    const NONCE_LEN: usize;
    /// Tag length in bytes.
    const TAG_LEN: usize;
    /// The cipher's name, for docs and diagnostics.
    const NAME: &'static str;

    /// Expands `key` (exactly [`Aead::KEY_LEN`] bytes) into a ready cipher.
    fn with_key(key: &[u8]) -> Self;

    /// Encrypts `buf` in place; writes the tag into `tag`
    /// ([`Aead::TAG_LEN`] bytes). `nonce` is [`Aead::NONCE_LEN`] bytes.
    fn seal_detached(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8], tag: &mut [u8]);

    /// Checks `tag` and decrypts `buf` in place. On failure `buf` holds
    /// unspecified bytes and must not be used.
    fn open_detached(
        &self,
        nonce: &[u8],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError>;
}

/// AES-256-GCM-SIV: nonce-misuse resistant, so a repeated nonce leaks only
/// equality of messages (the property deterministic name encryption needs).
#[derive(Clone)]
pub struct AesGcmSiv(Aes256GcmSiv);

impl Aead for AesGcmSiv {
    const KEY_LEN: usize = 32;
    const NONCE_LEN: usize = 12;
    const TAG_LEN: usize = 16;
    const NAME: &'static str = "AES-256-GCM-SIV";

    fn with_key(key: &[u8]) -> Self {
        let key: &[u8; 32] = key.try_into().expect("an AES-256 key is 32 bytes");
        AesGcmSiv(Aes256GcmSiv::new(key.into()))
    }

    fn seal_detached(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8], tag: &mut [u8]) {
        let nonce: [u8; 12] = nonce.try_into().expect("a 12-byte nonce");
        // Errors only for messages over 2^36 bytes, far above any sealfs message.
        let t = self
            .0
            .encrypt_inout_detached(&Nonce::from(nonce), aad, buf.into())
            .expect("AES-GCM-SIV message length within limits");
        tag.copy_from_slice(&t);
    }

    fn open_detached(
        &self,
        nonce: &[u8],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        let nonce: [u8; 12] = nonce.try_into().expect("a 12-byte nonce");
        let tag: [u8; 16] = tag
            .try_into()
            .map_err(|_| CryptoError::AuthenticationFailed)?;
        self.0
            .decrypt_inout_detached(&Nonce::from(nonce), aad, buf.into(), &Tag::from(tag))
            .map_err(|_| CryptoError::AuthenticationFailed)
    }
}

/// The cipher every volume format of this build uses.
pub type VolumeAead = AesGcmSiv;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_bit_of_the_tag_matters() {
        let c = AesGcmSiv::with_key(&[7; 32]);
        let mut buf = *b"sixteen bytes!!!";
        let mut tag = [0u8; 16];
        c.seal_detached(&[1; 12], b"aad", &mut buf, &mut tag);
        assert_ne!(&buf, b"sixteen bytes!!!");
        let sealed = buf;
        c.open_detached(&[1; 12], b"aad", &mut buf, &tag).unwrap();
        assert_eq!(&buf, b"sixteen bytes!!!");
        for bit in 0..128 {
            let mut t = tag;
            t[bit / 8] ^= 1 << (bit % 8);
            let mut b = sealed;
            assert!(c.open_detached(&[1; 12], b"aad", &mut b, &t).is_err());
        }
        let mut b = sealed;
        assert!(c.open_detached(&[1; 12], b"aaD", &mut b, &tag).is_err());
        let mut b = sealed;
        assert!(c.open_detached(&[2; 12], b"aad", &mut b, &tag).is_err());
        let mut b = sealed;
        assert!(c
            .open_detached(&[1; 12], b"aad", &mut b, &tag[..15])
            .is_err());
    }

    #[test]
    fn sizes_come_from_the_cipher() {
        assert_eq!(crate::crypto::NONCE_LEN, <VolumeAead as Aead>::NONCE_LEN);
        assert_eq!(crate::crypto::TAG_LEN, <VolumeAead as Aead>::TAG_LEN);
        assert_eq!(crate::crypto::KEY_LEN, <VolumeAead as Aead>::KEY_LEN);
    }
}
