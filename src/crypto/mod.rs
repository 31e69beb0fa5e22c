//! Cryptographic primitives: secret keys, the AEAD, key derivation.
//!
//! Owns: the [`SecretKey`] type (zeroized on drop, never printed), sealing and
//! opening with the volume cipher (behind the [`aead::Aead`] seam; today
//! AES-256-GCM-SIV), HKDF-SHA256 sub-key derivation with distinct labels,
//! Argon2id passphrase stretching, and OS CSPRNG access.
//!
//! Must never: do I/O, log, or put key bytes into an error or `Debug` output.
//! Tag checks are done by the `aes-gcm-siv` crate (constant time), never here.

pub mod aead;

use aead::{Aead, VolumeAead};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Length of every symmetric key in sealfs (the volume cipher's key).
pub const KEY_LEN: usize = <VolumeAead as Aead>::KEY_LEN;
/// Length of the volume cipher's nonce.
pub const NONCE_LEN: usize = <VolumeAead as Aead>::NONCE_LEN;
/// Length of the volume cipher's authentication tag.
pub const TAG_LEN: usize = <VolumeAead as Aead>::TAG_LEN;

/// Errors of the crypto layer. None of them carries key material.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The authentication tag did not verify: wrong key, wrong context, or
    /// tampered bytes.
    #[error("authentication failed (wrong key, wrong context or tampered data)")]
    AuthenticationFailed,
    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed")]
    Random,
    /// Passphrase stretching was given parameters Argon2 rejects.
    #[error("invalid key-derivation parameters: {0}")]
    KdfParams(String),
}

/// A 256-bit secret key. Zeroized on drop; `Debug` prints no key bytes.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// Wraps raw key bytes (the caller's copy should be zeroized by the caller).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(bytes)
    }

    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = [0u8; KEY_LEN];
        fill_random(&mut k)?;
        let key = SecretKey(k);
        k.zeroize();
        Ok(key)
    }

    /// The raw key bytes. Only for sealing into a wrapped form.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Derives a sub-key with HKDF-SHA256. `label` names the purpose and must be
    /// unique per purpose; `salt` binds the derivation to a volume or context.
    pub fn derive(&self, salt: &[u8], label: &[u8]) -> SecretKey {
        derive_key(&self.0, salt, label)
    }

    /// Builds an AEAD cipher instance from this key.
    pub fn cipher(&self) -> SealingKey {
        SealingKey::new(self)
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// HKDF-SHA256 from input keying material to a 256-bit key.
pub fn derive_key(ikm: &[u8], salt: &[u8], label: &[u8]) -> SecretKey {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = [0u8; KEY_LEN];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    hk.expand(label, &mut out)
        .expect("32-byte HKDF output is always valid");
    let key = SecretKey(out);
    out.zeroize();
    key
}

/// A wrapped key: (nonce, sealed key bytes, tag).
pub type WrappedKey = ([u8; NONCE_LEN], [u8; KEY_LEN], [u8; TAG_LEN]);

/// The volume cipher's expanded key, ready to seal and open.
#[derive(Clone)]
pub struct SealingKey {
    aead: VolumeAead,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl SealingKey {
    /// Expands `key` into a cipher.
    pub fn new(key: &SecretKey) -> Self {
        SealingKey {
            aead: VolumeAead::with_key(key.expose()),
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        self.aead.seal_detached(nonce, aad, buf, &mut tag);
        tag
    }

    /// Decrypts `buf` in place after checking `tag`. On failure `buf` holds
    /// unspecified bytes and must not be used.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        self.aead.open_detached(nonce, aad, buf, tag)
    }

    /// Seals a 32-byte key under this key with a fresh random nonce: returns
    /// (nonce, wrapped key, tag).
    pub fn wrap_key(&self, key: &SecretKey, aad: &[u8]) -> Result<WrappedKey, CryptoError> {
        let nonce = random_nonce()?;
        let mut buf = *key.expose();
        let tag = self.seal_in_place(&nonce, aad, &mut buf);
        Ok((nonce, buf, tag))
    }

    /// Opens a key sealed by [`SealingKey::wrap_key`].
    pub fn unwrap_key(
        &self,
        nonce: &[u8; NONCE_LEN],
        wrapped: &[u8; KEY_LEN],
        tag: &[u8; TAG_LEN],
        aad: &[u8],
    ) -> Result<SecretKey, CryptoError> {
        let mut buf = Zeroizing::new(*wrapped);
        self.open_in_place(nonce, aad, &mut buf[..], tag)?;
        Ok(SecretKey(*buf))
    }
}

/// Fills `buf` from the OS CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Random)
}

/// Bytes of OS randomness fetched at once per thread for nonces.
const NONCE_POOL: usize = 12 * 341;

thread_local! {
    static NONCES: std::cell::RefCell<([u8; NONCE_POOL], usize)> =
        const { std::cell::RefCell::new(([0u8; NONCE_POOL], NONCE_POOL)) };
}

/// A fresh random nonce from the OS CSPRNG. Bytes are fetched with one
/// `getrandom` call per 341 nonces into a per-thread pool and each byte is
/// handed out once (a syscall per 4 KiB chunk cost ~10% of write
/// throughput). The process never forks after the first nonce is drawn.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    NONCES.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (bytes, pos) = &mut *pool;
        if *pos + NONCE_LEN > NONCE_POOL {
            fill_random(bytes)?;
            *pos = 0;
        }
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&bytes[*pos..*pos + NONCE_LEN]);
        bytes[*pos..*pos + NONCE_LEN].fill(0);
        *pos += NONCE_LEN;
        Ok(n)
    })
}

/// Random 16-byte identifier (file ids, directory ids, volume ids).
pub fn random_id() -> Result<[u8; 16], CryptoError> {
    let mut n = [0u8; 16];
    fill_random(&mut n)?;
    Ok(n)
}

/// Argon2id cost parameters, as recorded in the volume config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Argon2Params {
    /// Defaults that cost ≥ 0.25 s on a 2-core VM: 256 MiB, 3 passes, 2 lanes.
    pub const DEFAULT: Argon2Params = Argon2Params {
        memory_kib: 256 * 1024,
        iterations: 3,
        parallelism: 2,
    };

    /// The floor below which a volume is refused (a config edited down to
    /// trivially cheap guessing): 8 MiB, 1 pass, 1 lane. Far under the
    /// defaults; it is what the test suites use to stay fast.
    pub const MIN: Argon2Params = Argon2Params {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };

    /// The ceiling above which a volume is refused, so a crafted config or
    /// keyring header cannot make the daemon allocate or spin without
    /// bound: 4 GiB, 64 passes, 16 lanes.
    pub const MAX: Argon2Params = Argon2Params {
        memory_kib: 4 * 1024 * 1024,
        iterations: 64,
        parallelism: 16,
    };

    /// Checks the parameters against [`Self::MIN`] and [`Self::MAX`].
    pub fn check(&self) -> Result<(), CryptoError> {
        let fields = [
            (
                "memory",
                "KiB",
                self.memory_kib,
                Self::MIN.memory_kib,
                Self::MAX.memory_kib,
            ),
            (
                "passes",
                "",
                self.iterations,
                Self::MIN.iterations,
                Self::MAX.iterations,
            ),
            (
                "lanes",
                "",
                self.parallelism,
                Self::MIN.parallelism,
                Self::MAX.parallelism,
            ),
        ];
        for (what, unit, v, lo, hi) in fields {
            if v < lo {
                return Err(CryptoError::KdfParams(format!(
                    "Argon2id {what} {v}{unit} is below the minimum {lo}{unit}"
                )));
            }
            if v > hi {
                return Err(CryptoError::KdfParams(format!(
                    "Argon2id {what} {v}{unit} is above the maximum {hi}{unit}"
                )));
            }
        }
        Ok(())
    }
}

/// Stretches a passphrase into a key-encryption key with Argon2id.
pub fn stretch_passphrase(
    passphrase: &[u8],
    salt: &[u8],
    params: Argon2Params,
) -> Result<SecretKey, CryptoError> {
    let p = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(KEY_LEN),
    )
    .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; KEY_LEN];
    a.hash_password_into(passphrase, salt, &mut out)
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    let k = SecretKey(out);
    out.zeroize();
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = SecretKey::generate().unwrap().cipher();
        let nonce = random_nonce().unwrap();
        let mut buf = *b"hello chunk data";
        let tag = k.seal_in_place(&nonce, b"aad", &mut buf);
        assert_ne!(&buf, b"hello chunk data");
        let mut copy = buf;
        k.open_in_place(&nonce, b"aad", &mut copy, &tag).unwrap();
        assert_eq!(&copy, b"hello chunk data");
        let mut copy = buf;
        assert_eq!(
            k.open_in_place(&nonce, b"aaX", &mut copy, &tag),
            Err(CryptoError::AuthenticationFailed)
        );
        let mut copy = buf;
        copy[3] ^= 1;
        assert!(k.open_in_place(&nonce, b"aad", &mut copy, &tag).is_err());
    }

    #[test]
    fn wrap_unwrap_key_binds_aad() {
        let kek = SecretKey::generate().unwrap().cipher();
        let dk = SecretKey::generate().unwrap();
        let (n, w, t) = kek.wrap_key(&dk, b"ctx-a").unwrap();
        assert_ne!(&w, dk.expose());
        let back = kek.unwrap_key(&n, &w, &t, b"ctx-a").unwrap();
        assert_eq!(back.expose(), dk.expose());
        assert!(kek.unwrap_key(&n, &w, &t, b"ctx-b").is_err());
    }

    #[test]
    fn nonces_never_repeat_across_pool_refills() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(3 * 341 + 5) {
            assert!(seen.insert(random_nonce().unwrap()));
        }
    }

    #[test]
    fn derive_labels_differ() {
        let k = SecretKey::generate().unwrap();
        assert_ne!(
            k.derive(b"s", b"one").expose(),
            k.derive(b"s", b"two").expose()
        );
        assert_eq!(
            k.derive(b"s", b"one").expose(),
            k.derive(b"s", b"one").expose()
        );
    }

    #[test]
    fn debug_redacts() {
        let k = SecretKey::from_bytes([0xAB; 32]);
        let s = format!("{:?} {:?}", k, k.cipher());
        assert!(!s.to_lowercase().contains("ab"), "{s}");
    }

    #[test]
    fn kdf_bounds() {
        assert!(Argon2Params::DEFAULT.check().is_ok());
        assert!(Argon2Params::MIN.check().is_ok());
        assert!(Argon2Params::MAX.check().is_ok());
        let weak = Argon2Params {
            memory_kib: 1024,
            ..Argon2Params::MIN
        };
        let e = weak.check().unwrap_err().to_string();
        assert!(e.contains("below the minimum 8192KiB"), "{e}");
        let greedy = Argon2Params {
            iterations: 1000,
            ..Argon2Params::DEFAULT
        };
        assert!(greedy
            .check()
            .unwrap_err()
            .to_string()
            .contains("above the maximum"));
        let zero_lanes = Argon2Params {
            parallelism: 0,
            ..Argon2Params::DEFAULT
        };
        assert!(zero_lanes.check().is_err());
    }

    #[test]
    fn argon2_small_params() {
        let p = Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let a = stretch_passphrase(b"pw", b"saltsaltsalt1234", p).unwrap();
        let b = stretch_passphrase(b"pw", b"saltsaltsalt1234", p).unwrap();
        let c = stretch_passphrase(b"pX", b"saltsaltsalt1234", p).unwrap();
        assert_eq!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
    }
}
