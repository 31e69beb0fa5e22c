//! The sealed keyring file `sealfs.keyring`: every master key version and
//! the volume's key state, sealed as one AES-256-GCM-SIV message under the
//! key-encryption key (KEK). docs/FORMAT.md §2 describes every byte.
//!
//! Two layouts, told apart by the version field after the magic:
//!
//! * [`v1`]: a fixed 72-byte header whose KEK *is* the unlock secret
//!   stretched (Argon2id over a passphrase, or HKDF over a key file), and a
//!   fixed-size body with one key's versions. Frozen: v1 volumes (and the
//!   fixture `tests/fixtures/v1`) open and are written byte for byte as
//!   before, until `sealfs upgrade`.
//! * [`v2`]: a header with a **slot table** (each slot a provider's public
//!   parameters and its own sealed copy of a *random* KEK), and a body with
//!   room for several named keys, the rollback anchor and the rotation
//!   schedule ([`body`]).
//!
//! Owns: both byte layouts, and the in-memory [`KeyringBody`] both decode
//! to. A wrong secret and a tampered keyring are the same event to the
//! AEAD; both surface as [`KeyringFormatError::Unlock`].
//! Must never: do I/O, interpret a slot's provider bytes (the keyring's
//! providers do), or keep decrypted bodies outside zeroizing buffers.

pub mod body;
pub mod v1;
pub mod v2;

use crate::crypto::{Argon2Params, CryptoError, SecretKey};

pub use body::{
    Assignment, AuditAnchor, AuditRetention, Key, KeyLifecycle, KeyOrigin, KeyringBody,
    MasterKeyVersion, DEFAULT_ALIAS, DEFAULT_KEY_ID,
};
pub use v1::{KekSource, V1Header};
pub use v2::{Slot, V2Header, MAX_SLOTS};

/// The first eight bytes of every keyring file.
pub const MAGIC: &[u8; 8] = b"sealfs.K";
/// Body flag: the key is disabled (all use refused until enabled).
pub const FLAG_DISABLED: u32 = 1;
/// Upper bound on versions in one keyring (keeps decoding bounded).
pub const MAX_VERSIONS: usize = 100_000;

/// Errors decoding or opening a keyring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringFormatError {
    /// Shorter than its header + tag, or body length inconsistent.
    #[error("keyring file is truncated or malformed")]
    Malformed,
    /// A v2 header or body field that breaks a rule (named).
    #[error("keyring file is malformed: {0}")]
    Invalid(String),
    /// Not a keyring.
    #[error("not a sealfs keyring (bad magic)")]
    BadMagic,
    /// Newer format.
    #[error("keyring version {0} is not supported by this sealfs")]
    UnsupportedVersion(u16),
    /// The KEK did not open it: wrong passphrase/key file, or tampered keyring.
    #[error("wrong passphrase or key file (or the keyring was tampered with)")]
    Unlock,
    /// Key-derivation parameters beyond [`crate::crypto::Argon2Params::MAX`]
    /// (checked before any key derivation runs).
    #[error("keyring key-derivation parameters are out of range: {0}")]
    KdfOutOfRange(String),
    /// RNG failure while sealing.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Lifecycle state of a master key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Usable for wrapping (if primary) and unwrapping.
    Enabled,
    /// Below the minimum decryption version: kept, but refuses to unwrap.
    Retired,
    /// Retired and scheduled for destruction at `deletion_due`.
    PendingDeletion,
    /// Key bytes erased; files under it are unreadable.
    Destroyed,
}

impl KeyState {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            KeyState::Enabled => 1,
            KeyState::Retired => 2,
            KeyState::PendingDeletion => 3,
            KeyState::Destroyed => 4,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => KeyState::Enabled,
            2 => KeyState::Retired,
            3 => KeyState::PendingDeletion,
            4 => KeyState::Destroyed,
            _ => return None,
        })
    }

    /// The name in the v2 body and the control protocol.
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Retired => "retired",
            KeyState::PendingDeletion => "pending_deletion",
            KeyState::Destroyed => "destroyed",
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<Self> {
        [
            KeyState::Enabled,
            KeyState::Retired,
            KeyState::PendingDeletion,
            KeyState::Destroyed,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// The cleartext, authenticated header of a keyring file of either layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringHeader {
    /// Layout 1: the KEK is derived from the unlock secret.
    V1(V1Header),
    /// Layout 2: a random KEK, sealed once per slot.
    V2(V2Header),
}

impl KeyringHeader {
    /// The volume id the keyring belongs to.
    pub fn volume_id(&self) -> [u8; 16] {
        match self {
            KeyringHeader::V1(h) => h.volume_id,
            KeyringHeader::V2(h) => h.volume_id,
        }
    }

    /// How many times the keyring has been rewritten.
    pub fn generation(&self) -> u32 {
        match self {
            KeyringHeader::V1(h) => h.generation,
            KeyringHeader::V2(h) => h.generation,
        }
    }

    /// Sets the generation a store writes.
    pub fn set_generation(&mut self, generation: u32) {
        match self {
            KeyringHeader::V1(h) => h.generation = generation,
            KeyringHeader::V2(h) => h.generation = generation,
        }
    }

    /// The layout version (1 or 2).
    pub fn layout(&self) -> u16 {
        match self {
            KeyringHeader::V1(_) => 1,
            KeyringHeader::V2(_) => 2,
        }
    }
}

/// Refuses Argon2id parameters above [`Argon2Params::MAX`] before any key
/// derivation runs (a crafted header must not make the daemon allocate or
/// spin without bound). Only the ceiling: the floor is the volume's policy
/// (new secrets), and unit tests use tiny costs.
pub fn check_kdf_ceiling(p: Argon2Params) -> Result<(), KeyringFormatError> {
    let capped = Argon2Params {
        memory_kib: p.memory_kib.min(Argon2Params::MAX.memory_kib),
        iterations: p.iterations.min(Argon2Params::MAX.iterations),
        parallelism: p.parallelism.min(Argon2Params::MAX.parallelism),
    };
    if capped != p {
        return Err(KeyringFormatError::KdfOutOfRange(format!(
            "{} KiB, {} passes, {} lanes",
            p.memory_kib, p.iterations, p.parallelism
        )));
    }
    Ok(())
}

/// The layout version of keyring bytes (after checking the magic).
pub fn layout_of(bytes: &[u8]) -> Result<u16, KeyringFormatError> {
    if bytes.len() < 10 {
        return Err(KeyringFormatError::Malformed);
    }
    if &bytes[..8] != MAGIC {
        return Err(KeyringFormatError::BadMagic);
    }
    Ok(u16::from_le_bytes([bytes[8], bytes[9]]))
}

/// The generation in the first bytes of keyring bytes (layout 1: bytes
/// 56..60; layout 2: 32..36), without parsing the rest: how a daemon on
/// shared storage sees cheaply that another host stored the keyring.
/// [`PEEK_LEN`] bytes are enough.
pub fn peek_generation(prefix: &[u8]) -> Result<u32, KeyringFormatError> {
    let at = match layout_of(prefix)? {
        v1::VERSION => 56,
        v2::VERSION => 32,
        v => return Err(KeyringFormatError::UnsupportedVersion(v)),
    };
    let b = prefix
        .get(at..at + 4)
        .ok_or(KeyringFormatError::Malformed)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// How many leading bytes [`peek_generation`] reads at most.
pub const PEEK_LEN: usize = 60;

/// Parses the cleartext header of either layout.
pub fn parse_header(bytes: &[u8]) -> Result<KeyringHeader, KeyringFormatError> {
    match layout_of(bytes)? {
        v1::VERSION => v1::parse_header(bytes).map(KeyringHeader::V1),
        v2::VERSION => v2::parse_header(bytes).map(KeyringHeader::V2),
        v => Err(KeyringFormatError::UnsupportedVersion(v)),
    }
}

/// Seals `body` under `kek` with `header` (its layout decides the bytes).
pub fn seal(
    body: &KeyringBody,
    header: &KeyringHeader,
    kek: &SecretKey,
) -> Result<Vec<u8>, KeyringFormatError> {
    match header {
        KeyringHeader::V1(h) => v1::seal(body, h, kek),
        KeyringHeader::V2(h) => v2::seal(body, h, kek),
    }
}

/// Opens keyring bytes of either layout with `kek`.
pub fn open(bytes: &[u8], kek: &SecretKey) -> Result<KeyringBody, KeyringFormatError> {
    match layout_of(bytes)? {
        v1::VERSION => v1::open(bytes, kek),
        v2::VERSION => v2::open(bytes, kek),
        v => Err(KeyringFormatError::UnsupportedVersion(v)),
    }
}
