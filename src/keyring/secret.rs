//! [`UnlockSecret`]: a passphrase or a key file, the two secrets sealfs had
//! before keyslots, kept as a convenience for callers that have one of
//! them. It is a [`KeyProvider`] like any other (it delegates to
//! [`Passphrase`] and [`KeyFile`]).
//!
//! Owns: reading a passfile, a passphrase line and a key file.
//! Must never: show a secret (`Debug` is redacted).

use std::fs;
use std::path::Path;

use zeroize::Zeroizing;

use super::provider::keyfile::KeyFile;
use super::provider::passphrase::Passphrase;
use super::provider::{
    KeyProvider, ProviderError, ProviderKind, SealedSlot, SlotContext, Unsealed,
};
use crate::crypto::{Argon2Params, SecretKey};
use crate::format::keyring::{Slot, V1Header};

/// A passphrase or a key file.
pub enum UnlockSecret {
    /// A passphrase (stretched with Argon2id).
    Passphrase(Zeroizing<Vec<u8>>),
    /// The 32 bytes of a key file.
    KeyFile(SecretKey),
}

impl std::fmt::Debug for UnlockSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnlockSecret::Passphrase(_) => f.write_str("UnlockSecret::Passphrase(<redacted>)"),
            UnlockSecret::KeyFile(_) => f.write_str("UnlockSecret::KeyFile(<redacted>)"),
        }
    }
}

/// Why an unlock secret could not be read (never contains secret bytes).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The passfile or key file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// "passfile" or "key file".
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file that does not hold exactly 32 bytes.
    #[error("key file {path} must hold exactly 32 bytes (has {len})")]
    KeyFileLength {
        /// The file.
        path: std::path::PathBuf,
        /// Its length.
        len: usize,
    },
    /// An empty passphrase (e.g. an empty passfile).
    #[error("empty passphrase")]
    EmptyPassphrase,
}

impl UnlockSecret {
    /// A passphrase: the first line of `text` (without its `\n` or `\r\n`),
    /// as in a passfile or the output of an `--extpass` command.
    pub fn from_passphrase_line(text: &[u8]) -> Result<Self, SecretError> {
        let end = text.iter().position(|&b| b == b'\n').unwrap_or(text.len());
        let mut line = Zeroizing::new(text[..end].to_vec());
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            return Err(SecretError::EmptyPassphrase);
        }
        Ok(UnlockSecret::Passphrase(line))
    }

    /// A passphrase read from the first line of the file at `path`.
    pub fn from_passfile(path: &Path) -> Result<Self, SecretError> {
        let bytes = Zeroizing::new(fs::read(path).map_err(|source| SecretError::Read {
            what: "passfile",
            path: path.to_path_buf(),
            source,
        })?);
        Self::from_passphrase_line(&bytes)
    }

    /// The 32 bytes of the key file at `path`.
    pub fn from_key_file(path: &Path) -> Result<Self, SecretError> {
        let kf = KeyFile::from_path(path)?;
        Ok(UnlockSecret::KeyFile(kf.key().clone()))
    }

    /// The provider this secret is, sealing new passphrase slots with `params`.
    pub fn provider(&self, params: Argon2Params) -> Box<dyn KeyProvider> {
        match self {
            UnlockSecret::Passphrase(p) => Box::new(Passphrase::new(p.clone()).with_params(params)),
            UnlockSecret::KeyFile(k) => Box::new(KeyFile::new(k.clone())),
        }
    }

    fn delegate(&self) -> Box<dyn KeyProvider> {
        self.provider(Argon2Params::DEFAULT)
    }
}

impl KeyProvider for UnlockSecret {
    fn kind(&self) -> &'static ProviderKind {
        match self {
            UnlockSecret::Passphrase(_) => &super::provider::passphrase::KIND,
            UnlockSecret::KeyFile(_) => &super::provider::keyfile::KIND,
        }
    }

    fn seal(&self, kek: &SecretKey, ctx: &SlotContext) -> Result<SealedSlot, ProviderError> {
        self.delegate().seal(kek, ctx)
    }

    fn unseal(&self, slot: &Slot, ctx: &SlotContext) -> Result<Unsealed, ProviderError> {
        self.delegate().unseal(slot, ctx)
    }

    fn v1_kek(&self, header: &V1Header) -> Option<Result<SecretKey, ProviderError>> {
        self.delegate().v1_kek(header)
    }
}
