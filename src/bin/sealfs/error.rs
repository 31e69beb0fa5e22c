//! Exit codes and the one error type of the command line: a code and a
//! message (printed as `sealfs: MESSAGE`).
//!
//! Owns: the exit codes (stable, documented in the README) and which
//! library error maps to which.
//! Must never: print (main does).

use sealfs::format::keyring::KeyringFormatError;
use sealfs::keyring::{KeyringError, ProviderError};
use sealfs::kmsclient::pkcs11::Pkcs11Error;
use sealfs::kmsclient::transit::TransitError;
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
    /// The PKCS#11 module (the .so) is missing or does not load.
    pub const PKCS11_MODULE: u8 = 30;
    /// The token's PIN is wrong (or locked).
    pub const WRONG_PIN: u8 = 31;
    /// The key is missing: on the token, or the Transit key.
    pub const KEY_MISSING: u8 = 32;
    /// The PKCS#11 token is absent or was removed.
    pub const TOKEN_ABSENT: u8 = 33;
    /// The KMS (OpenBao/Vault) cannot be reached (down, timeout, TLS, 5xx).
    pub const KMS_UNREACHABLE: u8 = 34;
    /// The KMS denied the request (token revoked, expired, or without the policy).
    pub const KMS_DENIED: u8 = 35;
    /// The KMS key is disabled (soft-deleted, or the slot's version is
    /// below its min_decryption_version).
    pub const KMS_KEY_DISABLED: u8 = 36;
    /// The keyring is older than the audit log or the KMS recorded.
    pub const ROLLBACK: u8 = 40;
}

/// The exit code of a provider's failure.
pub(crate) fn provider_code(e: &ProviderError) -> u8 {
    match e {
        ProviderError::WrongSecret => exit::WRONG_SECRET,
        ProviderError::Pkcs11(p) => match p {
            Pkcs11Error::ModuleUnavailable { .. } => exit::PKCS11_MODULE,
            Pkcs11Error::PinIncorrect { .. } | Pkcs11Error::PinLocked { .. } => exit::WRONG_PIN,
            Pkcs11Error::KeyNotFound { .. } => exit::KEY_MISSING,
            Pkcs11Error::TokenNotFound { .. } | Pkcs11Error::TokenUnavailable(_) => {
                exit::TOKEN_ABSENT
            }
            Pkcs11Error::UnwrapFailed { .. } => exit::BAD_VOLUME,
            _ => exit::ERROR,
        },
        ProviderError::Transit(t) => match t {
            TransitError::Unreachable { .. }
            | TransitError::Timeout { .. }
            | TransitError::Server { .. }
            | TransitError::Tls { .. } => exit::KMS_UNREACHABLE,
            TransitError::PermissionDenied { .. } => exit::KMS_DENIED,
            TransitError::KeyDisabled { .. } | TransitError::DecryptionNotAllowed { .. } => {
                exit::KMS_KEY_DISABLED
            }
            TransitError::KeyNotFound { .. } => exit::KEY_MISSING,
            TransitError::InvalidCiphertext { .. } => exit::BAD_VOLUME,
            _ => exit::ERROR,
        },
        ProviderError::Malformed(_) => exit::BAD_VOLUME,
        _ => exit::ERROR,
    }
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
            VolumeError::Keyring(k) if k.is_wrong_secret() => exit::WRONG_SECRET,
            VolumeError::Keyring(k) if k.provider_error().is_some() => {
                provider_code(k.provider_error().expect("checked"))
            }
            VolumeError::Keyring(
                KeyringError::Slot(_) | KeyringError::NotUpgraded | KeyringError::Lifecycle(_),
            ) => exit::ERROR,
            VolumeError::Keyring(KeyringError::AuditRefused(_)) => exit::ERROR,
            VolumeError::Config(_) | VolumeError::Keyring(_) | VolumeError::NotAVolume(_) => {
                exit::BAD_VOLUME
            }
            _ => exit::ERROR,
        };
        let msg = match &e {
            VolumeError::Keyring(KeyringError::Format(KeyringFormatError::Unlock)) => {
                "wrong passphrase or key file (or recovery key); nothing was changed".to_string()
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
        use sealfs::kms::KeyError;
        match e {
            KeyError::Volume(v) => v.into(),
            KeyError::Rollback(_) => CliError::new(exit::ROLLBACK, e.to_string()),
            KeyError::Kms(ref p) => CliError::new(provider_code(p), e.to_string()),
            other => CliError::new(exit::ERROR, other.to_string()),
        }
    }
}

impl From<KeyringError> for CliError {
    fn from(e: KeyringError) -> Self {
        VolumeError::Keyring(e).into()
    }
}
