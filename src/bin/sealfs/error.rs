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

/// Adds what to do to an error about the volume in `cipherdir`: which
/// file is damaged or missing, the line of a corrupt `sealfs.toml`, and
/// the command that repairs it (`sealfs fsck --salvage` restores the
/// keyring from its second copy and rebuilds the config from the
/// keyring's header).
pub(crate) fn with_volume_hint(e: CliError, cipherdir: &std::path::Path) -> CliError {
    let salvage = format!(
        "run 'sealfs fsck {} --salvage' to repair it from its second copy, or restore \
         the cipher dir from a backup",
        cipherdir.display()
    );
    let keyring = cipherdir.join(sealfs::keyring::KEYRING_FILE);
    let msg = &e.msg;
    let msg = if msg.starts_with("keyring file is truncated or malformed") {
        format!(
            "the keyring {} is truncated or malformed: {salvage}",
            keyring.display()
        )
    } else if msg.starts_with("keyring I/O: ") && msg.contains("No such file or directory") {
        format!(
            "the keyring {} is missing: restore it from a backup of the cipher dir (a \
             copy made without sealfs.keyring cannot be opened); if sealfs.keyring.bak is \
             still there, 'sealfs fsck {} --salvage' restores the keyring from it",
            keyring.display(),
            cipherdir.display()
        )
    } else if let Some(what) = msg.strip_prefix("sealfs.toml is corrupted: ") {
        let path = cipherdir.join("sealfs.toml");
        let line = std::fs::read_to_string(&path).ok().and_then(|text| {
            let span = toml::from_str::<toml::Table>(&text).err()?.span()?;
            Some(text[..span.start.min(text.len())].matches('\n').count() + 1)
        });
        let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
        format!(
            "{}{at} is corrupted ({what}): run 'sealfs fsck {} --salvage' to rebuild it \
             from the keyring",
            path.display(),
            cipherdir.display()
        )
    } else if msg.contains("is in use by another sealfs process") {
        match daemon_of(cipherdir) {
            Some(pid) => format!(
                "{msg} (the sealfs daemon of this volume is pid {pid}; if its mount was \
                 detached while files were open, it ends when they close, or at once with \
                 'kill -INT {pid}')"
            ),
            None => return e,
        }
    } else {
        return e;
    };
    CliError::new(e.code, msg)
}

/// The pid of a `sealfs mount` process (other than this one) for
/// `cipherdir`, from /proc.
fn daemon_of(cipherdir: &std::path::Path) -> Option<u32> {
    let want = cipherdir.canonicalize().ok()?;
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let is_mount = args.iter().any(|a| *a == b"mount");
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        let names_it = args.iter().any(|a| {
            use std::os::unix::ffi::OsStrExt;
            let p = cwd.join(std::ffi::OsStr::from_bytes(a));
            p.canonicalize().is_ok_and(|c| c == want)
        });
        (pid != me && is_mount && names_it).then_some(pid)
    })
}
