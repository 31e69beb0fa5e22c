//! The unlocked keyring: master key versions in memory, the wrapping ciphers
//! derived from them, and the crash-safe storage of `sealfs.keyring`.
//!
//! Owns: turning an unlock secret into the KEK, loading the keyring (primary
//! copy, falling back to its `.bak` copy), writing it durably (write-new,
//! fsync, rename, fsync directory; then the same for the backup), and handing
//! out per-version wrapping ciphers.
//! Must never: log or expose key bytes; wrap under a version that is not
//! enabled.

use std::collections::HashMap;
use std::fs;
use std::os::fd::BorrowedFd;
use std::path::Path;

use zeroize::Zeroizing;

use crate::crypto::{
    derive_key, stretch_passphrase, Argon2Params, CryptoError, SealingKey, SecretKey,
};
use crate::format::header::RecordKind;
use crate::format::keyring::{
    self as kfmt, KekSource, KeyState, KeyringBody, KeyringFormatError, KeyringHeader,
    MasterKeyVersion,
};
use crate::sys;

pub use crate::format::reserved::{KEYRING_BACKUP, KEYRING_FILE};
/// File mode of both copies: the keyring is an offline guessing target for
/// a passphrase, so no other local user may read it.
pub const KEYRING_MODE: u32 = 0o600;

/// Errors of the keyring layer.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Reading or writing the keyring files failed.
    #[error("keyring I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The keyring could not be decoded or opened.
    #[error(transparent)]
    Format(#[from] KeyringFormatError),
    /// Key derivation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The unlock secret is of the wrong kind for this volume.
    #[error("this volume is unlocked with a {0}")]
    WrongSecretKind(&'static str),
    /// A lifecycle change that is not allowed (e.g. retiring the primary version).
    #[error("{0}")]
    Lifecycle(String),
    /// The keyring belongs to another volume than the config.
    #[error("keyring and sealfs.toml belong to different volumes (corrupted or swapped config)")]
    VolumeMismatch,
}

/// What unlocks a volume.
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
        let bytes = Zeroizing::new(fs::read(path).map_err(|source| SecretError::Read {
            what: "key file",
            path: path.to_path_buf(),
            source,
        })?);
        let mut k: [u8; 32] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretError::KeyFileLength {
                    path: path.to_path_buf(),
                    len: bytes.len(),
                })?;
        let key = SecretKey::from_bytes(k);
        zeroize::Zeroize::zeroize(&mut k);
        Ok(UnlockSecret::KeyFile(key))
    }
}

/// How a new KEK for `secret` will be derived, with a fresh salt.
fn new_kek_source(
    secret: &UnlockSecret,
    params: Argon2Params,
) -> Result<(KekSource, [u8; 16]), KeyringError> {
    let mut salt = [0u8; 16];
    crate::crypto::fill_random(&mut salt)?;
    let src = match secret {
        UnlockSecret::Passphrase(_) => KekSource::Passphrase(params),
        UnlockSecret::KeyFile(_) => KekSource::KeyFile,
    };
    Ok((src, salt))
}

/// Derives the key-encryption key for a keyring header.
pub fn derive_kek(
    header: &KeyringHeader,
    secret: &UnlockSecret,
) -> Result<SecretKey, KeyringError> {
    match (header.kek, secret) {
        (KekSource::Passphrase(p), UnlockSecret::Passphrase(pw)) => {
            Ok(stretch_passphrase(pw, &header.salt, p)?)
        }
        (KekSource::KeyFile, UnlockSecret::KeyFile(k)) => Ok(derive_key(
            k.expose(),
            &header.salt,
            b"sealfs v1 kek from key file",
        )),
        (KekSource::Passphrase(_), _) => Err(KeyringError::WrongSecretKind("passphrase")),
        (KekSource::KeyFile, _) => Err(KeyringError::WrongSecretKind("key file")),
    }
}

/// The unlocked keyring.
#[derive(Clone)]
pub struct Keyring {
    header: KeyringHeader,
    kek: SecretKey,
    body: KeyringBody,
    wrappers: HashMap<(u32, bool), SealingKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.body.primary)
            .field("versions", &self.body.versions.len())
            .finish_non_exhaustive()
    }
}

pub use crate::sys::now_secs;

impl Keyring {
    /// A new keyring with master key version 1 for a new volume.
    pub fn create(
        volume_id: [u8; 16],
        secret: &UnlockSecret,
        params: Argon2Params,
    ) -> Result<(Self, [u8; 16]), KeyringError> {
        let (kek_src, salt) = new_kek_source(secret, params)?;
        let header = KeyringHeader {
            kek: kek_src,
            salt,
            volume_id,
            generation: 0,
        };
        let kek = derive_kek(&header, secret)?;
        let body = KeyringBody {
            primary: 1,
            flags: 0,
            versions: vec![MasterKeyVersion {
                version: 1,
                state: KeyState::Enabled,
                created: now_secs(),
                deletion_due: 0,
                key: SecretKey::generate()?,
            }],
        };
        Ok((Self::assemble(header, kek, body), salt))
    }

    fn assemble(header: KeyringHeader, kek: SecretKey, body: KeyringBody) -> Self {
        let mut k = Keyring {
            header,
            kek,
            body,
            wrappers: HashMap::new(),
        };
        k.rebuild_wrappers();
        k
    }

    /// Unlocks keyring bytes with `secret`.
    pub fn unlock(bytes: &[u8], secret: &UnlockSecret) -> Result<Self, KeyringError> {
        let header = kfmt::parse_header(bytes)?;
        let kek = derive_kek(&header, secret)?;
        let body = kfmt::open(bytes, &kek)?;
        Ok(Self::assemble(header, kek, body))
    }

    /// Loads and unlocks the keyring of `cipherdir`, falling back to the backup
    /// copy if the primary one is missing or damaged (not if the secret is wrong).
    pub fn load(cipherdir: BorrowedFd<'_>, secret: &UnlockSecret) -> Result<Self, KeyringError> {
        let primary = read_copy(cipherdir, KEYRING_FILE);
        let first_err = match primary {
            Ok(bytes) => match Self::unlock(&bytes, secret) {
                Ok(k) => return Ok(k),
                Err(e) => e,
            },
            Err(e) => KeyringError::Io(e),
        };
        match read_copy(cipherdir, KEYRING_BACKUP) {
            Ok(bytes) => Self::unlock(&bytes, secret).map_err(|_| first_err),
            // A refused object at the backup's name says more than a
            // missing or damaged primary copy.
            Err(e) if sys::WrongKind::is(&e) => Err(KeyringError::Io(e)),
            Err(_) => Err(first_err),
        }
    }

    /// Writes both copies durably (each: temp file, fsync, rename, fsync dir).
    pub fn store(&mut self, cipherdir: BorrowedFd<'_>) -> Result<(), KeyringError> {
        self.header.generation = self.header.generation.wrapping_add(1);
        let bytes = kfmt::seal(&self.body, &self.header, &self.kek)?;
        for name in [KEYRING_FILE, KEYRING_BACKUP] {
            sys::write_durably(cipherdir, name, &bytes, KEYRING_MODE)?;
        }
        Ok(())
    }

    /// Checks another stored copy of this keyring (e.g. the backup) with the
    /// KEK already derived, without running the KDF again: it must have the
    /// same KDF header and open. Returns its generation.
    pub fn check_copy(&self, bytes: &[u8]) -> Result<u32, KeyringError> {
        let header = kfmt::parse_header(bytes)?;
        if header.kek != self.header.kek
            || header.salt != self.header.salt
            || header.volume_id != self.header.volume_id
        {
            return Err(KeyringFormatError::Unlock.into());
        }
        kfmt::open(bytes, &self.kek)?;
        Ok(header.generation)
    }

    /// Brings both stored copies in line with this (loaded) keyring: a copy
    /// that is missing, damaged, or of another generation (a crash between
    /// the two writes of [`Keyring::store`]) is rewritten from the one that
    /// matches. Returns whether anything was rewritten.
    pub fn resync_copies(&self, cipherdir: BorrowedFd<'_>) -> Result<bool, KeyringError> {
        let read = |n: &str| read_copy(cipherdir, n).ok();
        let copies = [read(KEYRING_FILE), read(KEYRING_BACKUP)];
        let matches = |b: &Option<Vec<u8>>| {
            b.as_deref()
                .is_some_and(|b| self.check_copy(b).ok() == Some(self.header.generation))
        };
        let ok = [matches(&copies[0]), matches(&copies[1])];
        let (good, bad) = match ok {
            [true, true] | [false, false] => return Ok(false),
            [true, false] => (0, KEYRING_BACKUP),
            [false, true] => (1, KEYRING_FILE),
        };
        let bytes = copies[good].as_deref().expect("a matching copy was read");
        sys::write_durably(cipherdir, bad, bytes, KEYRING_MODE)?;
        Ok(true)
    }

    /// How many times the keyring has been rewritten (from its header).
    pub fn generation(&self) -> u32 {
        self.header.generation
    }

    /// The volume id the keyring belongs to.
    pub fn volume_id(&self) -> [u8; 16] {
        self.header.volume_id
    }

    /// The KDF parameters of the unlock secret.
    pub fn kek_source(&self) -> KekSource {
        self.header.kek
    }

    /// The salt of the KEK derivation.
    pub fn kdf_salt(&self) -> [u8; 16] {
        self.header.salt
    }

    /// The primary master key version.
    pub fn primary(&self) -> u32 {
        self.body.primary
    }

    /// All versions (keys included; never print them).
    pub fn versions(&self) -> &[MasterKeyVersion] {
        &self.body.versions
    }

    fn rebuild_wrappers(&mut self) {
        let mut wrappers = HashMap::new();
        for v in &self.body.versions {
            if v.state == KeyState::Destroyed {
                continue;
            }
            for kind in [RecordKind::File, RecordKind::Dir] {
                let k = v.key.derive(&self.header.volume_id, kind.wrap_label());
                wrappers.insert((v.version, kind == RecordKind::File), k.cipher());
            }
        }
        self.wrappers = wrappers;
    }

    fn version_mut(&mut self, version: u32) -> Result<&mut MasterKeyVersion, KeyringError> {
        self.body
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .ok_or_else(|| KeyringError::Lifecycle(format!("no key version {version}")))
    }

    /// Adds a new master key version and makes it primary (RotateKeyOnDemand).
    /// The caller stores the keyring.
    pub fn rotate(&mut self) -> Result<u32, KeyringError> {
        let next = self
            .body
            .versions
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            + 1;
        self.body.versions.push(MasterKeyVersion {
            version: next,
            state: KeyState::Enabled,
            created: now_secs(),
            deletion_due: 0,
            key: SecretKey::generate()?,
        });
        self.body.primary = next;
        self.rebuild_wrappers();
        Ok(next)
    }

    /// Whether the whole key is disabled (DisableKey).
    pub fn disabled(&self) -> bool {
        self.body.flags & kfmt::FLAG_DISABLED != 0
    }

    /// Disables or enables the whole key.
    pub fn set_disabled(&mut self, disabled: bool) {
        if disabled {
            self.body.flags |= kfmt::FLAG_DISABLED;
        } else {
            self.body.flags &= !kfmt::FLAG_DISABLED;
        }
    }

    /// Retires every enabled version below `min` (the minimum decryption
    /// version): they stay in the keyring but refuse to unwrap. Returns the
    /// versions retired.
    pub fn retire_below(&mut self, min: u32) -> Result<Vec<u32>, KeyringError> {
        if min > self.body.primary {
            return Err(KeyringError::Lifecycle(format!(
                "cannot retire the primary version {} (minimum {min} is above it)",
                self.body.primary
            )));
        }
        let mut done = Vec::new();
        for v in self.body.versions.iter_mut() {
            if v.version < min && v.state == KeyState::Enabled {
                v.state = KeyState::Retired;
                done.push(v.version);
            }
        }
        self.rebuild_wrappers();
        Ok(done)
    }

    /// Re-enables a retired version (undoes a trim).
    pub fn unretire(&mut self, version: u32) -> Result<(), KeyringError> {
        let v = self.version_mut(version)?;
        if v.state != KeyState::Retired {
            return Err(KeyringError::Lifecycle(format!(
                "version {version} is not retired"
            )));
        }
        v.state = KeyState::Enabled;
        Ok(())
    }

    /// Schedules a retired version for destruction at `due` (ScheduleKeyDeletion).
    pub fn schedule_deletion(&mut self, version: u32, due: u64) -> Result<(), KeyringError> {
        let v = self.version_mut(version)?;
        if v.state != KeyState::Retired {
            return Err(KeyringError::Lifecycle(format!(
                "version {version} must be retired (trim) before its deletion is scheduled"
            )));
        }
        v.state = KeyState::PendingDeletion;
        v.deletion_due = due;
        Ok(())
    }

    /// Cancels a scheduled deletion; the version goes back to retired.
    pub fn cancel_deletion(&mut self, version: u32) -> Result<(), KeyringError> {
        let v = self.version_mut(version)?;
        if v.state != KeyState::PendingDeletion {
            return Err(KeyringError::Lifecycle(format!(
                "version {version} is not pending deletion"
            )));
        }
        v.state = KeyState::Retired;
        v.deletion_due = 0;
        Ok(())
    }

    /// Destroys every version whose deletion is due at `now`: its key bytes
    /// are erased (crypto-shredding). Returns the versions destroyed.
    pub fn destroy_due(&mut self, now: u64) -> Vec<u32> {
        let mut done = Vec::new();
        for v in self.body.versions.iter_mut() {
            if v.state == KeyState::PendingDeletion && v.deletion_due <= now {
                v.state = KeyState::Destroyed;
                v.key = SecretKey::from_bytes([0u8; 32]);
                done.push(v.version);
            }
        }
        if !done.is_empty() {
            self.rebuild_wrappers();
        }
        done
    }

    /// Re-seals the keyring under a new unlock secret (new salt; passphrase
    /// secrets use `params`). Returns the new KEK source and salt for the config.
    pub fn change_secret(
        &mut self,
        secret: &UnlockSecret,
        params: Argon2Params,
    ) -> Result<(KekSource, [u8; 16]), KeyringError> {
        let (kek_src, salt) = new_kek_source(secret, params)?;
        let header = KeyringHeader {
            kek: kek_src,
            salt,
            ..self.header
        };
        self.kek = derive_kek(&header, secret)?;
        self.header = header;
        Ok((kek_src, salt))
    }

    /// The master key of `version` unless it is destroyed: for deriving the
    /// audit-log and grant-store keys (never for wrapping data keys).
    pub(crate) fn master_key(&self, version: u32) -> Option<&SecretKey> {
        self.body
            .versions
            .iter()
            .find(|v| v.version == version && v.state != KeyState::Destroyed)
            .map(|v| &v.key)
    }

    /// The wrapping cipher for `kind` records under `version`, if that version
    /// exists and is enabled.
    pub fn wrapper(&self, version: u32, kind: RecordKind) -> Option<SealingKey> {
        let v = self.body.versions.iter().find(|v| v.version == version)?;
        if v.state != KeyState::Enabled {
            return None;
        }
        self.wrappers
            .get(&(version, kind == RecordKind::File))
            .cloned()
    }
}

/// Writes `name` in `dir` so that after a crash either the old or the new
/// content is there: write a temp file, fsync it, rename over, fsync the dir.
/// Reads one stored copy of the keyring (never through a symlink, never a
/// FIFO or device planted at its name).
pub fn read_copy(cipherdir: BorrowedFd<'_>, name: &str) -> std::io::Result<Vec<u8>> {
    sys::read_regular(cipherdir, std::ffi::OsStr::new(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    fn dirfd(d: &tempfile::TempDir) -> OwnedFd {
        sys::open_dir_path(d.path()).unwrap()
    }

    fn pw(s: &str) -> UnlockSecret {
        UnlockSecret::Passphrase(Zeroizing::new(s.as_bytes().to_vec()))
    }
    const P: Argon2Params = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn store_load_and_fallback() {
        let d = tempfile::tempdir().unwrap();
        let (mut k, _) = Keyring::create([1; 16], &pw("secret"), P).unwrap();
        k.store(dirfd(&d).as_fd()).unwrap();
        let back = Keyring::load(dirfd(&d).as_fd(), &pw("secret")).unwrap();
        assert_eq!(back.primary(), 1);
        assert!(back.wrapper(1, RecordKind::File).is_some());
        assert!(back.wrapper(2, RecordKind::File).is_none());
        assert!(matches!(
            Keyring::load(dirfd(&d).as_fd(), &pw("wrong")),
            Err(KeyringError::Format(KeyringFormatError::Unlock))
        ));
        // a damaged primary falls back to the backup
        fs::write(d.path().join(KEYRING_FILE), b"garbage").unwrap();
        assert!(Keyring::load(dirfd(&d).as_fd(), &pw("secret")).is_ok());
        let dbg = format!("{back:?} {:?}", pw("secret"));
        assert!(!dbg.contains("secret"));
    }

    #[test]
    fn lifecycle_rotate_retire_delete_destroy() {
        let d = tempfile::tempdir().unwrap();
        let (mut k, _) = Keyring::create([1; 16], &pw("secret"), P).unwrap();
        assert_eq!(k.rotate().unwrap(), 2);
        assert_eq!(k.rotate().unwrap(), 3);
        assert_eq!(k.primary(), 3);
        assert!(k.wrapper(1, RecordKind::File).is_some());
        assert!(k.retire_below(4).is_err(), "primary cannot be retired");
        assert_eq!(k.retire_below(2).unwrap(), vec![1]);
        assert!(k.wrapper(1, RecordKind::File).is_none());
        assert!(
            k.schedule_deletion(2, 100).is_err(),
            "only retired versions"
        );
        k.schedule_deletion(1, 100).unwrap();
        assert!(k.destroy_due(99).is_empty());
        k.set_disabled(true);
        k.store(dirfd(&d).as_fd()).unwrap();
        let mut back = Keyring::load(dirfd(&d).as_fd(), &pw("secret")).unwrap();
        assert!(back.disabled());
        assert_eq!(back.versions()[0].state, KeyState::PendingDeletion);
        assert_eq!(back.destroy_due(100), vec![1]);
        assert_eq!(back.versions()[0].key.expose(), &[0u8; 32]);
        assert!(back.wrapper(1, RecordKind::File).is_none());
        assert!(back.wrapper(2, RecordKind::File).is_some());
    }

    #[test]
    fn change_secret_keeps_keys() {
        let d = tempfile::tempdir().unwrap();
        let (mut k, _) = Keyring::create([1; 16], &pw("old"), P).unwrap();
        let key1 = k.versions()[0].key.expose().to_owned();
        k.change_secret(&pw("new"), P).unwrap();
        k.store(dirfd(&d).as_fd()).unwrap();
        assert!(Keyring::load(dirfd(&d).as_fd(), &pw("old")).is_err());
        let back = Keyring::load(dirfd(&d).as_fd(), &pw("new")).unwrap();
        assert_eq!(back.versions()[0].key.expose(), &key1);
    }

    #[test]
    fn key_file_secret() {
        let kf = UnlockSecret::KeyFile(SecretKey::from_bytes([9; 32]));
        let (k, _) = Keyring::create([1; 16], &kf, P).unwrap();
        let bytes = kfmt::seal(&k.body, &k.header, &k.kek).unwrap();
        assert!(Keyring::unlock(&bytes, &kf).is_ok());
        assert!(matches!(
            Keyring::unlock(&bytes, &pw("x")),
            Err(KeyringError::WrongSecretKind(_))
        ));
        let other = UnlockSecret::KeyFile(SecretKey::from_bytes([8; 32]));
        assert!(Keyring::unlock(&bytes, &other).is_err());
    }
}
