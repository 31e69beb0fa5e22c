//! The volume layer's error type, and how it maps to an errno.
//!
//! Owns: [`VolumeError`] (every failure of the volume layer, from a system
//! call to an integrity failure) and its errno mapping for the frontend.
//! Must never: carry key material, plaintext names or content.

use std::io;
use std::path::PathBuf;

use crate::crypto::CryptoError;
use crate::format::chunk::ChunkError;
use crate::format::config::{ConfigError, CONFIG_FILE};
use crate::format::group_state::StateError;
use crate::format::header::HeaderError;
use crate::format::links::LinkTableError;
use crate::format::names::NameError;
use crate::format::rootattrs::RootAttrsError;
use crate::format::xattrs::XattrError;
use crate::keyring::KeyringError;

/// Errors of the volume layer; [`VolumeError::errno`] maps them for FUSE.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A system call failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A ciphertext file is shorter than its structure says (truncated).
    #[error("ciphertext truncated")]
    Truncated,
    /// A header or directory record failed to decode or open.
    #[error("integrity: {0}")]
    Header(#[from] HeaderError),
    /// A chunk failed authentication.
    #[error("integrity: {0}")]
    Chunk(#[from] ChunkError),
    /// A chunk group's sealed state is missing or failed authentication.
    #[error("integrity: {0}")]
    GroupState(#[from] StateError),
    /// A name could not be encrypted or decrypted.
    #[error("name: {0}")]
    Name(#[from] NameError),
    /// The config could not be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The keyring could not be used.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// Randomness failure.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Not a sealfs volume.
    #[error("{0} is not a sealfs volume (no {CONFIG_FILE})")]
    NotAVolume(PathBuf),
    /// The keyring's place and the volume disagree (`--keyring-dir`).
    #[error("{0}")]
    KeyringPlace(String),
    /// init on a non-empty directory.
    #[error("{0} is not empty; sealfs init needs an empty or new directory")]
    NotEmpty(PathBuf),
    /// Both copies of a directory record are unreadable.
    #[error("directory metadata is missing or damaged (both copies)")]
    DirRecordLost,
    /// The volume is mounted read-only.
    #[error("read-only volume")]
    ReadOnly,
    /// Another sealfs process has the volume open for writing.
    #[error("{0} is in use by another sealfs process (mounted, or a key command is running): unmount it first, or use 'sealfs ctl' on the mount for key management")]
    InUse(PathBuf),
    /// Daemons mounted with `--shared-storage` hold the volume; a writer
    /// without it may not join them.
    #[error("{0} is mounted by sealfs daemons in shared-storage mode: mount with --shared-storage too, or unmount them (on every host) first")]
    InUseShared(PathBuf),
    /// A writer without `--shared-storage` holds the volume; a
    /// shared-storage daemon may not join it.
    #[error("{0} is in use by a sealfs process that is not in shared-storage mode (a mount without --shared-storage, or a key command): unmount it or let it finish first")]
    InUseExclusive(PathBuf),
    /// The volume's config says it must be mounted with `--shared-storage`.
    #[error("{0} must be mounted with --shared-storage (sealfs.toml sets shared_storage = true: other hosts may have it mounted)")]
    SharedStorageRequired(PathBuf),
    /// Another host changed a shared file in a way this daemon cannot
    /// follow (e.g. re-keyed the keyring): remount.
    #[error("{0}")]
    SharedChange(String),
    /// The primary master key version is not usable for wrapping.
    #[error("the primary master key version is not enabled")]
    KeyUnavailable,
    /// A linked file reached through a name its link table does not list:
    /// a backing link planted by someone else, or a stale table.
    #[error("integrity: the file's link table does not list this name (planted or stale link)")]
    LinkNotListed,
    /// A link table failed to open or decode.
    #[error("integrity: {0}")]
    LinkTable(#[from] LinkTableError),
    /// A file has as many names as its link table (or the backing
    /// filesystem's xattr space) can hold.
    #[error("too many links")]
    TooManyLinks,
    /// An extended attribute could not be used.
    #[error("extended attribute: {0}")]
    Xattr(#[from] XattrError),
    /// The volume lacks the feature an operation needs (hard links,
    /// extended attributes): made before it (docs/FORMAT.md §1.1).
    #[error("the volume does not have the '{0}' feature (made before it; docs/FORMAT.md §1.1)")]
    FeatureMissing(&'static str),
    /// `sealfs.root` (the mount root's attributes) does not open.
    #[error("integrity: {0}")]
    RootAttrs(#[from] RootAttrsError),
}

impl VolumeError {
    pub(crate) fn short_read(e: io::Error) -> VolumeError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            VolumeError::Truncated
        } else {
            VolumeError::Io(e)
        }
    }

    /// The errno the FUSE frontend should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            VolumeError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            VolumeError::Name(NameError::TooLong) => libc::ENAMETOOLONG,
            VolumeError::Name(NameError::Invalid) => libc::EINVAL,
            VolumeError::ReadOnly => libc::EROFS,
            VolumeError::KeyUnavailable => libc::EACCES,
            VolumeError::Header(HeaderError::KeyVersionUnavailable(_)) => libc::EACCES,
            VolumeError::TooManyLinks => libc::EMLINK,
            VolumeError::LinkTable(LinkTableError::Full(_)) => libc::EMLINK,
            VolumeError::Xattr(XattrError::Unsupported) => libc::EOPNOTSUPP,
            VolumeError::Xattr(XattrError::BadName) => libc::ERANGE,
            VolumeError::Xattr(XattrError::TooBig) => libc::E2BIG,
            VolumeError::FeatureMissing(f) if *f == crate::format::config::FEATURE_HARD_LINKS => {
                libc::EPERM
            }
            VolumeError::FeatureMissing(_) => libc::EOPNOTSUPP,
            _ => libc::EIO,
        }
    }

    /// Whether this is an integrity failure (tampering, moved ciphertext, truncation).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            VolumeError::Truncated
                | VolumeError::Chunk(_)
                | VolumeError::GroupState(_)
                | VolumeError::Header(HeaderError::ContextMismatch)
                | VolumeError::Header(HeaderError::BadMagic(_))
                | VolumeError::Header(HeaderError::Truncated(_))
                | VolumeError::Name(NameError::Tampered)
                | VolumeError::DirRecordLost
                | VolumeError::LinkNotListed
                | VolumeError::LinkTable(LinkTableError::Tampered)
                | VolumeError::LinkTable(LinkTableError::Malformed)
                | VolumeError::LinkTable(LinkTableError::RolledBack)
                | VolumeError::Xattr(XattrError::Tampered)
                | VolumeError::RootAttrs(_)
        )
    }
}
