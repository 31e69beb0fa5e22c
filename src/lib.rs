//! sealfs: a FUSE filesystem that encrypts a folder, with key management
//! modelled on a cloud KMS (versioned master keys wrapping per-file data keys,
//! path-bound encryption context).
//!
//! Layers, from the bottom: [`crypto`] (keys, AEAD, KDF; no I/O), [`format`](mod@format)
//! (bytes in, bytes out; [`format::reserved`] names every file sealfs keeps
//! in a cipher directory), [`sys`] (system calls, durable writes, the
//! clock), [`keyring`] (unlocking and storing master key versions),
//! [`volume`] (the cipher directory: records, content, namespace steps,
//! fsck), [`policy`] (grants, the audit log, who is asking), [`kms`] (key
//! policy: rotate, trim, disable, deletion, schedules), [`fs`] (the fuser
//! frontend that maps kernel requests onto the volume), [`ctl`] (the
//! control socket and its typed protocol), and [`daemon`] (a whole mount,
//! assembled); [`vault`] and [`transfer`] use a volume without mounting it.
//!
//! To use a volume from a program without mounting it, start at [`Vault`]:
//! open a cipher directory with an [`UnlockSecret`], then list, read and
//! write files by plaintext path, and manage its keys (see `examples/`). To
//! mount one, start at [`daemon::Mount::builder`].
#![warn(missing_docs)]

pub mod crypto;
pub mod ctl;
pub mod daemon;
pub mod format;
pub mod fs;
pub mod fuzz;
pub mod hardening;
pub mod keyring;
pub mod kms;
pub mod kmsclient;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod sys;
pub mod transfer;
pub mod vault;
pub mod volume;

pub use keyring::{SecretError, UnlockSecret};
pub use vault::{Vault, VaultError};
pub use volume::VolumeError;
