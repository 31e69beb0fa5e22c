//! Exit codes and the one error type of the command line: a code and a
//! message (printed as `sealfs: MESSAGE`).
//!
//! Owns: the exit codes (stable, documented in the README) and which
//! library error maps to which.
//! Must never: print (main does).

use sealfs::format::keyring::KeyringFormatError;
use sealfs::keyring::KeyringError;
use sealfs::volume::VolumeError;

/// Exit codes (stable; documented in the README).
pub(crate) mod exit {
    pub const ERROR: u8 = 1;
    pub const MOUNTPOINT: u8 = 10;
    pub const WRONG_SECRET: u8 = 12;
    pub const BAD_VOLUME: u8 = 23;
    /// import/export: done, but some entries were not transferred (each
    /// one is reported). Same number as [`AUDIT_BROKEN`]: "finished incomplete".
    pub const PARTIAL: u8 = 3;
    /// fsck, as fsck(8): problems found and all of them repaired.
    pub const FSCK_REPAIRED: u8 = 1;
    /// fsck: problems found and (some) left unrepaired.
    pub const FSCK_PROBLEMS: u8 = 4;
    /// fsck: could not run (wrong secret, not a volume, mounted, I/O).
    pub const FSCK_FAILED: u8 = 8;
    /// audit verify/export: the chain is broken (a record missing, edited or reordered).
    pub const AUDIT_BROKEN: u8 = 3;
}

pub(crate) struct CliError {
    pub(crate) code: u8,
    pub(crate) msg: String,
}

impl CliError {
    pub(crate) fn new(code: u8, msg: impl Into<String>) -> Self {
        CliError {
            code,
            msg: msg.into(),
        }
    }
}

impl From<VolumeError> for CliError {
    fn from(e: VolumeError) -> Self {
        let code = match &e {
            VolumeError::Keyring(KeyringError::Format(KeyringFormatError::Unlock)) => {
                exit::WRONG_SECRET
            }
            VolumeError::Keyring(KeyringError::WrongSecretKind(_)) => exit::WRONG_SECRET,
            VolumeError::Config(_) | VolumeError::Keyring(_) | VolumeError::NotAVolume(_) => {
                exit::BAD_VOLUME
            }
            _ => exit::ERROR,
        };
        let msg = match &e {
            VolumeError::Keyring(KeyringError::Format(KeyringFormatError::Unlock)) => {
                "wrong passphrase or key file (nothing was changed)".to_string()
            }
            other => other.to_string(),
        };
        CliError::new(code, msg)
    }
}

impl From<sealfs::VaultError> for CliError {
    fn from(e: sealfs::VaultError) -> Self {
        match e {
            sealfs::VaultError::Volume(v) => v.into(),
            other => CliError::new(exit::ERROR, other.to_string()),
        }
    }
}

impl From<sealfs::transfer::TransferError> for CliError {
    fn from(e: sealfs::transfer::TransferError) -> Self {
        match e {
            sealfs::transfer::TransferError::Vault(v) => v.into(),
            other => CliError::new(exit::ERROR, other.to_string()),
        }
    }
}

impl From<sealfs::kms::KeyError> for CliError {
    fn from(e: sealfs::kms::KeyError) -> Self {
        match e {
            sealfs::kms::KeyError::Volume(v) => v.into(),
            other => CliError::new(exit::ERROR, other.to_string()),
        }
    }
}
