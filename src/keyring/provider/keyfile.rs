//! Keyslot kind 2, `key-file`: the KEK sealed under a key derived from a
//! 32-byte key file.
//!
//! Public parameters: a 16-byte salt. Sealed KEK: nonce ‖ sealed KEK ‖ tag
//! (60 bytes) under `HKDF(ikm = the file, salt, "sealfs v2 keyslot key
//! file")`, AAD [`SlotContext::aad`].
//!
//! Owns: reading key files (exactly 32 bytes) and the layout-1 key-file KEK.
//! Must never: keep the file's bytes outside a zeroizing buffer or show them.

use std::path::Path;

use zeroize::Zeroizing;

use super::{
    seal_with_derived_key, unseal_with_derived_key, KeyProvider, ProviderError, ProviderKind,
    SealedSlot, SlotContext, Unsealed,
};
use crate::crypto::{derive_key, SecretKey};
use crate::format::keyring::{KekSource, Slot, V1Header};
use crate::keyring::SecretError;

/// The `key-file` kind.
pub const KIND: ProviderKind = ProviderKind {
    tag: 2,
    name: "key-file",
    describe: |_| "key file (32 bytes)".to_string(),
    unattended: |_| None,
};

const LABEL: &[u8] = b"sealfs v2 keyslot key file";

/// The 32 bytes of a key file.
pub struct KeyFile {
    key: SecretKey,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFile(<redacted>)")
    }
}

impl KeyFile {
    /// The key file's bytes.
    pub fn new(key: SecretKey) -> Self {
        KeyFile { key }
    }

    /// Reads a key file: exactly 32 bytes.
    pub fn from_path(path: &Path) -> Result<Self, SecretError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| SecretError::Read {
            what: "key file",
            path: path.to_path_buf(),
            source,
        })?);
        let k: Zeroizing<[u8; 32]> = Zeroizing::new(bytes.as_slice().try_into().map_err(|_| {
            SecretError::KeyFileLength {
                path: path.to_path_buf(),
                len: bytes.len(),
            }
        })?);
        Ok(KeyFile {
            key: SecretKey::from_bytes(*k),
        })
    }

    /// The key's bytes (for the layout-1 derivation of [`crate::UnlockSecret`]).
    pub(crate) fn key(&self) -> &SecretKey {
        &self.key
    }
}

impl KeyProvider for KeyFile {
    fn kind(&self) -> &'static ProviderKind {
        &KIND
    }

    fn describe(&self) -> String {
        "key file".into()
    }

    fn seal(&self, kek: &SecretKey, ctx: &SlotContext) -> Result<SealedSlot, ProviderError> {
        seal_with_derived_key(self.key.expose(), LABEL, &KIND, kek, ctx)
    }

    fn unseal(&self, slot: &Slot, ctx: &SlotContext) -> Result<Unsealed, ProviderError> {
        unseal_with_derived_key(self.key.expose(), LABEL, &KIND, slot, ctx)
    }

    fn v1_kek(&self, header: &V1Header) -> Option<Result<SecretKey, ProviderError>> {
        match header.kek {
            KekSource::KeyFile => Some(Ok(derive_key(
                self.key.expose(),
                &header.salt,
                b"sealfs v1 kek from key file",
            ))),
            KekSource::Passphrase(_) => None,
        }
    }
}
