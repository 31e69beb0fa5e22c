//! The volume: a cipher directory opened with its unlock secret.
//!
//! This module creates and opens volumes (config, keyring, the volume lock)
//! and keeps the sealed records: directory records (`sealfs.dir` and its
//! second copy `sealfs.dir.bak`), file headers, and re-binding either to a
//! new encryption context with two slots (docs/FORMAT.md §6). Around it:
//! * [`namespace`]: the step order of every namespace change (create,
//!   mkdir, symlink, rename, unlink, rmdir), for the FUSE frontend, the
//!   library and fsck alike;
//! * [`content`]: one open file's chunks, through one group-run
//!   reader/writer; [`backing`]: plain operations on one backing object,
//!   and [`EntryKind`];
//! * [`walk`] (listing a directory, walking the tree), [`rewrap`] and
//!   [`census`] (volume-wide jobs over the walk), [`fsck`] (checking and
//!   salvaging);
//! * [`reclaim`]: freeing unlinked files off the request path;
//! * [`links`]: file headers with their link state (hard links: the link
//!   table, re-binding for renames and links, re-wrapping);
//! * [`xattrs`]: encrypted extended attributes and POSIX ACLs on backing
//!   objects.
//! * [`rootattrs`]: the mount root's mode, owner and group, kept apart
//!   from the cipher directory's own.
//!
//! Directory-relative: every call takes the backing directory's fd, so
//! callers (the FUSE frontend, offline tools) own the inode/path
//! bookkeeping.
//!
//! Owns: what a volume is on disk besides content and names (those are
//! [`content`] and [`crate::format::names`]), and the write order of its
//! records.
//! Must never: know about FUSE, or log names, keys or content.

pub mod backing;
pub mod census;
pub mod content;
mod error;
pub mod fsck;
pub mod links;
pub mod namespace;
pub mod reclaim;
pub mod rewrap;
pub mod rootattrs;
pub mod shared;
pub mod subtree;
pub mod walk;
pub mod xattrs;

/// Moved to [`crate::sys`]; kept at this path so code written against it
/// still compiles. New code uses `crate::sys`.
pub use crate::sys;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use crate::crypto::{random_id, Argon2Params, SecretKey};
use crate::format::chunk::ContentFormat;
use crate::format::config::{hex, ConfigError, KdfConfig, VolumeConfig, CONFIG_FILE, PADDED_NAMES};
use crate::format::header::{EncryptionContext, HeaderError, RecordKind, SealedRecord, RECORD_LEN};
use crate::format::keyring::KekSource;
use crate::format::layout::plaintext_size;
use crate::format::names::{NameCipher, NameScheme};
use crate::format::reserved;
use crate::keyring::{
    KeyProvider, Keyring, KeyringError, UnlockSecret, Unlocker, KEYRING_BACKUP, KEYRING_FILE,
};
pub use backing::EntryKind;
use content::SealedFile;

/// A rollback anchor and the audit stream it is in (`None`: the local
/// stream; else the host id), as a keyring store records it.
pub type StreamAnchor = (Option<String>, crate::format::keyring::AuditAnchor);
pub use error::VolumeError;
pub use shared::SharedStorage;
use shared::{Resource, ResourceGuard};

// Reserved names live in `format::reserved`; these paths are kept for users.
pub use crate::format::reserved::{DIR_RECORD, DIR_RECORD_BACKUP, LOCK_FILE};

/// An unlocked directory: its id (children bind to it) and its name cipher.
#[derive(Debug, Clone)]
pub struct Directory {
    /// Random directory id.
    pub id: [u8; 16],
    /// Name and symlink-target cipher.
    pub names: NameCipher,
    key: SecretKey,
    /// The master key version its record is wrapped under (0: unknown).
    pub key_version: u32,
}

/// The config's description of how the keyring's KEK is derived.
pub fn kdf_config(src: KekSource, salt: [u8; 16]) -> KdfConfig {
    match src {
        KekSource::Passphrase(p) => KdfConfig::Argon2id {
            memory_kib: p.memory_kib,
            iterations: p.iterations,
            parallelism: p.parallelism,
            salt: hex(&salt),
        },
        KekSource::KeyFile => KdfConfig::KeyFile { salt: hex(&salt) },
    }
}

/// The config `config` should be for `keyring`: a layout-1 keyring's KDF
/// in `[kdf]` and no keyslots flag would be wrong for it only if the
/// keyring is layout 2 (then: the flag, no `[kdf]`). A config that
/// announces keyslots beside a layout-1 keyring is an upgrade a crash
/// interrupted: left as it is (the keyring still opens; `sealfs upgrade`
/// finishes it).
pub fn config_for(config: &VolumeConfig, keyring: &Keyring) -> VolumeConfig {
    let mut c = config.clone();
    match keyring.v1_kdf() {
        Some((src, salt)) => c.kdf = Some(kdf_config(src, salt)),
        None => {
            c.kdf = None;
            if !c.has_keyslots() {
                c.features
                    .push(crate::format::config::FEATURE_KEYSLOTS.to_string());
            }
        }
    }
    c
}

/// The config a keyring header implies (to rebuild a lost `sealfs.toml`;
/// a rotation period kept in the old config is lost for layout 1).
pub fn config_from_header(h: &crate::format::keyring::KeyringHeader) -> VolumeConfig {
    match h {
        crate::format::keyring::KeyringHeader::V1(h) => {
            VolumeConfig::layout1(h.volume_id, kdf_config(h.kek, h.salt))
        }
        crate::format::keyring::KeyringHeader::V2(h) => VolumeConfig::new(h.volume_id),
    }
}

/// An opened volume.
#[derive(Debug)]
pub struct Volume {
    cipherdir: PathBuf,
    /// The cipher directory, opened once: sealfs's own files in it are
    /// reached through this fd with `*at` calls, never by path.
    root: std::os::fd::OwnedFd,
    config: RwLock<VolumeConfig>,
    volume_id: [u8; 16],
    keyring: RwLock<Keyring>,
    read_only: bool,
    /// Mirrors the keyring's disabled flag for a lock-free check per request.
    disabled: std::sync::atomic::AtomicBool,
    /// Some named key is disabled, pending deletion or has an expiry: open
    /// files and cached directories are then checked per request
    /// ([`Volume::version_usable`]); otherwise that costs one load.
    keys_restricted: std::sync::atomic::AtomicBool,
    /// Some key has a policy: FUSE requests then consult it (one load
    /// otherwise).
    key_policies: std::sync::atomic::AtomicBool,
    /// Directory records moved to another key version since the volume
    /// opened (id → version now), so a directory cached before that sees
    /// its new key at once ([`Volume::dir_key_version`]).
    rewrapped_dirs: RwLock<std::collections::HashMap<[u8; 16], u32>>,
    /// `rewrapped_dirs` is not empty (one load per request otherwise).
    any_dir_rewrapped: std::sync::atomic::AtomicBool,
    /// Shared by lookups/creates and jobs like rewrap; exclusive for renames,
    /// unlinks and rmdirs, so a (directory, name) context is stable while used.
    namespace: RwLock<()>,
    /// Serializes keyring changes (rotate, disable, trim, …) and their store.
    keyring_store: parking_lot::Mutex<()>,
    /// How names are sealed (the config's `padded-names` feature).
    name_scheme: NameScheme,
    /// The mode lock on `sealfs.lock` while opened writable: exclusive for
    /// one writer (a mount, or an offline command), never two keyrings in
    /// memory overwriting each other; shared among shared-storage daemons,
    /// which then change every shared file under its resource lock
    /// ([`shared`]).
    _lock: Option<shared::VolumeLock>,
    /// Set when opened for a shared-storage mount.
    shared: Option<SharedStorage>,
    /// The directory holding the keyring when it is kept outside CIPHERDIR
    /// (feature `external-keyring`); None: CIPHERDIR.
    keyring_dir: Option<std::os::fd::OwnedFd>,
}

/// File mode of `sealfs.toml` (no secret, but nobody else's business).
pub const CONFIG_MODE: u32 = 0o600;

/// The sealed bytes of the record copy `name` (`sealfs.dir` or its second
/// copy, or a temp copy) of the backing directory `dir`.
pub(crate) fn read_record_copy(
    dir: BorrowedFd<'_>,
    name: &str,
) -> Result<[u8; RECORD_LEN], VolumeError> {
    let f = sys::open_regular(dir, OsStr::new(name), libc::O_RDONLY)?;
    let mut buf = [0u8; RECORD_LEN];
    sys::read_exact_at(&f, &mut buf, 0).map_err(VolumeError::short_read)?;
    Ok(buf)
}

fn is_empty_dir(p: &Path) -> io::Result<bool> {
    match fs::read_dir(p) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Where the keyring of the volume in `cipherdir` (with `config`) is: an
/// open directory when it is kept outside (the unlocker's
/// `keyring_dir`), None for CIPHERDIR. The volume's feature and the
/// caller's directory must agree.
fn keyring_place(
    cipherdir: &Path,
    config: &VolumeConfig,
    unlock: &dyn Unlocker,
) -> Result<Option<std::os::fd::OwnedFd>, VolumeError> {
    let outside = config
        .features
        .iter()
        .any(|f| f == crate::format::config::FEATURE_EXTERNAL_KEYRING);
    match (outside, unlock.keyring_dir()) {
        (false, None) => Ok(None),
        (true, Some(d)) => sys::open_dir_path(d).map(Some).map_err(|e| {
            VolumeError::KeyringPlace(format!(
                "cannot open the keyring directory {}: {e}",
                d.display()
            ))
        }),
        (true, None) => Err(VolumeError::KeyringPlace(format!(
            "{} keeps its keyring outside the cipher directory (made with --keyring-dir): pass --keyring-dir DIR, the directory holding its sealfs.keyring",
            cipherdir.display()
        ))),
        (false, Some(d)) => Err(VolumeError::KeyringPlace(format!(
            "{} keeps its keyring in the cipher directory; drop --keyring-dir {}",
            cipherdir.display(),
            d.display()
        ))),
    }
}

impl Volume {
    /// Creates a new volume in an empty (or absent) `cipherdir`, with one
    /// keyslot for `secret` (a passphrase slot uses `params`).
    pub fn create(
        cipherdir: &Path,
        secret: &UnlockSecret,
        params: Argon2Params,
    ) -> Result<(), VolumeError> {
        Self::create_with(cipherdir, &[(secret.provider(params).as_ref(), "")])
    }

    /// Creates a new volume in an empty (or absent) `cipherdir` with one
    /// keyslot per (provider, label), in that order.
    pub fn create_with(
        cipherdir: &Path,
        slots: &[(&dyn KeyProvider, &str)],
    ) -> Result<(), VolumeError> {
        Self::create_with_keyring_dir(cipherdir, slots, None)
    }

    /// [`Volume::create_with`], keeping the keyring in `keyring_dir` (an
    /// existing directory without a keyring) instead of CIPHERDIR: the
    /// volume gets feature `external-keyring`, and every unlock then needs
    /// the directory ([`Unlocker::keyring_dir`]).
    pub fn create_with_keyring_dir(
        cipherdir: &Path,
        slots: &[(&dyn KeyProvider, &str)],
        keyring_dir: Option<&Path>,
    ) -> Result<(), VolumeError> {
        let outside = match keyring_dir {
            None => None,
            Some(d) => {
                let fd = sys::open_dir_path(d).map_err(|e| {
                    VolumeError::KeyringPlace(format!(
                        "cannot open the keyring directory {}: {e}; create it first (mkdir -m 700)",
                        d.display()
                    ))
                })?;
                if [KEYRING_FILE, KEYRING_BACKUP]
                    .iter()
                    .any(|n| sys::fstatat(fd.as_fd(), OsStr::new(n)).is_ok())
                {
                    return Err(VolumeError::KeyringPlace(format!(
                        "{} already holds a keyring: give each volume its own keyring directory",
                        d.display()
                    )));
                }
                Some(fd)
            }
        };
        if !is_empty_dir(cipherdir)? {
            return Err(VolumeError::NotEmpty(cipherdir.to_path_buf()));
        }
        let volume_id = random_id()?;
        // Every slot is sealed (a token asked, a KMS called) before
        // anything is written: a failure leaves CIPHERDIR as it was.
        let mut keyring = Keyring::create(volume_id, slots)?;
        // A cipher directory made here is the owner's alone (0700); the
        // mount root shows what a mkdir would have given it (`sealfs.root`).
        // One that exists keeps its mode, and its root starts with it.
        let root_attrs = match fs::metadata(cipherdir) {
            Ok(md) => {
                use std::os::unix::fs::MetadataExt;
                rootattrs::RootAttrs {
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = cipherdir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent)?;
                }
                use std::os::unix::fs::DirBuilderExt;
                match fs::DirBuilder::new().mode(0o700).create(cipherdir) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    r => r?,
                }
                rootattrs::new_root_attrs()
            }
            Err(e) => return Err(e.into()),
        };
        let root = sys::open_dir_path(cipherdir)?;
        let mut config = VolumeConfig::new(volume_id);
        if outside.is_some() {
            config
                .features
                .push(crate::format::config::FEATURE_EXTERNAL_KEYRING.to_string());
        }
        keyring.store(outside.as_ref().map_or(root.as_fd(), |d| d.as_fd()))?;
        let mut vol = Volume::assemble(cipherdir, root, config.clone(), volume_id, keyring, false);
        vol.keyring_dir = outside;
        let root_key = SecretKey::generate()?;
        let root_dir = vol.write_dir_record(
            vol.root(),
            random_id()?,
            &root_key,
            &EncryptionContext::ROOT,
            vol.primary_wrapper(RecordKind::Dir)?,
            true,
        )?;
        vol.store_root_attrs(&root_dir, &root_attrs)?;
        vol.store_config(&config)?;
        Ok(())
    }

    /// Opens and unlocks an existing volume with the first provider of
    /// `unlock` that opens a keyslot (an [`UnlockSecret`] is one provider).
    pub fn open(
        cipherdir: &Path,
        unlock: &dyn Unlocker,
        read_only: bool,
    ) -> Result<Self, VolumeError> {
        let config = Self::read_config(cipherdir)?;
        Self::open_with_config(cipherdir, unlock, config, read_only, !read_only)
    }

    /// Reads and parses `sealfs.toml`.
    pub fn read_config(cipherdir: &Path) -> Result<VolumeConfig, VolumeError> {
        let root = match sys::open_dir_path(cipherdir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NotAVolume(cipherdir.to_path_buf()))
            }
            Err(e) => return Err(e.into()),
        };
        Self::read_config_at(cipherdir, root.as_fd())
    }

    fn read_config_at(cipherdir: &Path, root: BorrowedFd<'_>) -> Result<VolumeConfig, VolumeError> {
        let bytes = match sys::read_regular(root, OsStr::new(CONFIG_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NotAVolume(cipherdir.to_path_buf()))
            }
            Err(e) => return Err(e.into()),
        };
        let text =
            String::from_utf8(bytes).map_err(|_| ConfigError::Parse("not UTF-8 text".into()))?;
        Ok(VolumeConfig::parse(&text)?)
    }

    /// Opens and unlocks a volume with an already parsed `config`; `lock`
    /// takes `sealfs.lock` even when `read_only` (an offline check that must
    /// not run beside a mount).
    pub fn open_with_config(
        cipherdir: &Path,
        unlock: &dyn Unlocker,
        config: VolumeConfig,
        read_only: bool,
        lock: bool,
    ) -> Result<Self, VolumeError> {
        Self::open_in_mode(cipherdir, unlock, config, read_only, lock, None)
    }

    /// Opens and unlocks a volume for a mount: with `shared`, in
    /// shared-storage mode (a shared mode lock beside other such daemons,
    /// every change of a shared file under its resource lock); without,
    /// the exclusive lock when writable, as [`Volume::open`].
    pub fn open_for_mount(
        cipherdir: &Path,
        unlock: &dyn Unlocker,
        read_only: bool,
        shared: Option<SharedStorage>,
    ) -> Result<Self, VolumeError> {
        let config = Self::read_config(cipherdir)?;
        Self::open_in_mode(cipherdir, unlock, config, read_only, !read_only, shared)
    }

    fn open_in_mode(
        cipherdir: &Path,
        unlock: &dyn Unlocker,
        config: VolumeConfig,
        read_only: bool,
        lock: bool,
        shared: Option<SharedStorage>,
    ) -> Result<Self, VolumeError> {
        let volume_id = config.volume_id_bytes()?;
        let root = sys::open_dir_path(cipherdir)?;
        let lock = if lock {
            Some(shared::lock_volume(
                cipherdir,
                root.as_fd(),
                shared.is_some(),
            )?)
        } else {
            None
        };
        // Beside other hosts: the keyring read and its copies resynced
        // while nobody stores it.
        let _keyring_lock = match (&lock, &shared) {
            (Some(_), Some(_)) => Some(shared::lock_resource(root.as_fd(), Resource::Keyring)?),
            _ => None,
        };
        let outside = keyring_place(cipherdir, &config, unlock)?;
        let keyring_fd = outside.as_ref().map_or(root.as_fd(), |d| d.as_fd());
        let keyring = Keyring::load(keyring_fd, unlock)?;
        if keyring.volume_id() != volume_id {
            return Err(KeyringError::VolumeMismatch.into());
        }
        // A crash between the two keyring writes leaves one copy stale; the
        // second copy is only a safety net while it matches.
        if !read_only && keyring.resync_copies(keyring_fd)? {
            tracing::warn!(
                "one keyring copy was missing, damaged or stale; rewritten from the other"
            );
        }
        // The keyring is authoritative for how it is unlocked; a config
        // that disagrees (a crash between the two writes of `passwd` or of
        // `upgrade`) is brought in line when the volume is writable.
        let mut config = config;
        let expected = config_for(&config, &keyring);
        if config != expected {
            tracing::warn!(
                "sealfs.toml disagrees with the keyring about how it is unlocked (KDF section or keyslots flag); using the keyring's"
            );
            config = expected;
            if !read_only {
                sys::write_durably(
                    root.as_fd(),
                    CONFIG_FILE,
                    config.to_toml().as_bytes(),
                    CONFIG_MODE,
                )?;
            }
        }
        let mut vol = Volume::assemble(cipherdir, root, config, volume_id, keyring, read_only);
        vol._lock = lock;
        vol.shared = shared;
        vol.keyring_dir = outside;
        Ok(vol)
    }

    fn assemble(
        cipherdir: &Path,
        root: std::os::fd::OwnedFd,
        config: VolumeConfig,
        volume_id: [u8; 16],
        keyring: Keyring,
        read_only: bool,
    ) -> Self {
        let name_scheme = if config.features.iter().any(|f| f == PADDED_NAMES) {
            NameScheme::Padded16
        } else {
            NameScheme::Exact
        };
        Volume {
            name_scheme,
            cipherdir: cipherdir.to_path_buf(),
            root,
            config: RwLock::new(config),
            volume_id,
            disabled: std::sync::atomic::AtomicBool::new(keyring.disabled()),
            keys_restricted: std::sync::atomic::AtomicBool::new(keyring.some_key_restricted()),
            key_policies: std::sync::atomic::AtomicBool::new(keyring.any_policy()),
            rewrapped_dirs: RwLock::new(std::collections::HashMap::new()),
            any_dir_rewrapped: std::sync::atomic::AtomicBool::new(false),
            keyring: RwLock::new(keyring),
            read_only,
            namespace: RwLock::new(()),
            keyring_store: parking_lot::Mutex::new(()),
            _lock: None,
            shared: None,
            keyring_dir: None,
        }
    }

    /// The shared-storage choices when opened for a shared-storage mount.
    pub fn shared(&self) -> Option<&SharedStorage> {
        self.shared.as_ref()
    }

    /// Shared storage: takes or renews the schedule lease for this host
    /// (see [`shared::LEASE_TIME`]); whether this host holds it now.
    /// Always true otherwise (the only writer runs its schedules).
    pub fn take_schedule_lease(&self) -> Result<bool, VolumeError> {
        match &self.shared {
            Some(s) if !self.read_only => {
                shared::take_lease(self.root(), &s.host_id, sys::now_ms())
            }
            _ => Ok(true),
        }
    }

    /// Shared storage: gives the schedule lease up if this host holds it.
    pub fn release_schedule_lease(&self) -> Result<(), VolumeError> {
        match &self.shared {
            Some(s) if !self.read_only => shared::release_lease(self.root(), &s.host_id),
            _ => Ok(()),
        }
    }

    /// In shared-storage mode: waits for and takes the lock of `r` (held
    /// until the guard drops). `None` otherwise (this daemon is the only
    /// writer; its own mutexes suffice).
    pub fn lock_resource(&self, r: Resource) -> Result<Option<ResourceGuard>, VolumeError> {
        if self.shared.is_none() || self.read_only {
            return Ok(None);
        }
        shared::lock_resource(self.root(), r).map(Some)
    }

    /// In shared-storage mode: waits for and takes the lock of the content
    /// of the backing file with inode number `ino` (`write`: exclusive, else
    /// shared),
    /// under which the open file's size and group states are read again
    /// ([`content::SealedFile::reload_from_disk`]). `None` otherwise.
    pub fn lock_content(
        &self,
        ino: u64,
        write: bool,
    ) -> Result<Option<ResourceGuard>, VolumeError> {
        if self.shared.is_none() || self.read_only {
            return Ok(None);
        }
        let kind = if write {
            sys::RangeLockKind::Exclusive
        } else {
            sys::RangeLockKind::Shared
        };
        shared::lock_resource_as(self.root(), Resource::FileContent(ino), kind).map(Some)
    }

    /// In shared-storage mode: waits for and takes the lock of the header
    /// block of the open backing file `file` (a header re-read and
    /// rewritten under it is never another host's change overwritten).
    /// `None` otherwise.
    pub(crate) fn lock_header(&self, file: &File) -> Result<Option<ResourceGuard>, VolumeError> {
        if self.shared.is_none() || self.read_only {
            return Ok(None);
        }
        let st = sys::fstat(file.as_fd())?;
        shared::lock_resource(self.root(), Resource::FileHeader(st.st_ino)).map(Some)
    }

    /// The directory the keyring's two copies are in: CIPHERDIR, or the
    /// one given with `--keyring-dir` for a volume that keeps it outside.
    pub fn keyring_fd(&self) -> BorrowedFd<'_> {
        self.keyring_dir
            .as_ref()
            .map_or_else(|| self.root(), |d| d.as_fd())
    }

    /// Whether the keyring is kept outside CIPHERDIR.
    pub fn keyring_outside(&self) -> bool {
        self.keyring_dir.is_some()
    }

    /// The name cipher of the directory `id` with directory key `key`, in
    /// this volume's name scheme.
    pub(crate) fn name_cipher(&self, key: &SecretKey, id: [u8; 16]) -> NameCipher {
        NameCipher::with_scheme(key, id, self.name_scheme)
    }

    /// How this volume seals names.
    pub fn name_scheme(&self) -> NameScheme {
        self.name_scheme
    }

    /// The namespace lock (see the field's doc).
    pub fn namespace(&self) -> &RwLock<()> {
        &self.namespace
    }

    /// Whether the key is disabled: all file I/O is refused with EACCES.
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Applies `change` to a copy of the keyring, stores the copy durably,
    /// and only then makes it current: memory never runs ahead of what a
    /// remount would load, and file I/O (which reads the keyring to wrap new
    /// keys) is not held up by the store's fsyncs. Changes are serialized.
    pub fn update_keyring<T>(
        &self,
        change: impl FnOnce(&mut Keyring) -> Result<T, KeyringError>,
    ) -> Result<T, VolumeError> {
        self.update_keyring_with(change, |_| Ok(None))
            .map(|(out, _)| out)
    }

    /// Like [`Volume::update_keyring`], with `before_store` called under
    /// the same lock once `change` succeeded and before the store, with the
    /// generation the store will write: it may refuse (an audit record that
    /// could not be written) or hand back the rollback anchor to store
    /// (with the audit stream it is in: `None` is the local stream).
    pub fn update_keyring_with<T>(
        &self,
        change: impl FnOnce(&mut Keyring) -> Result<T, KeyringError>,
        before_store: impl FnOnce(u32) -> Result<Option<StreamAnchor>, KeyringError>,
    ) -> Result<(T, u32), VolumeError> {
        self.check_writable()?;
        let _one_at_a_time = self.keyring_store.lock();
        // Shared storage: the change applies to what is on disk now, under
        // the keyring's lock (compare-and-swap on its generation).
        let _keyring_lock = self.lock_resource(Resource::Keyring)?;
        if _keyring_lock.is_some() {
            self.follow_stored_keyring()?;
        }
        let mut next = self.keyring.read().clone();
        let out = change(&mut next)?;
        let anchor = before_store(next.generation().wrapping_add(1))?;
        if let Some((stream, a)) = anchor {
            next.set_stream_anchor(stream.as_deref(), a);
        }
        next.store(self.keyring_fd())?;
        let generation = next.generation();
        self.install_keyring(next);
        Ok((out, generation))
    }

    /// Makes `next` the keyring in memory (with the per-request flags).
    fn install_keyring(&self, next: Keyring) {
        use std::sync::atomic::Ordering::Release;
        self.disabled.store(next.disabled(), Release);
        self.keys_restricted
            .store(next.some_key_restricted(), Release);
        self.key_policies.store(next.any_policy(), Release);
        *self.keyring.write() = next;
    }

    /// The generation of the stored keyring (its first copy, or the second
    /// when the first does not read), from its first bytes only.
    fn stored_keyring_generation(&self) -> Result<u32, VolumeError> {
        let peek = |name: &str| -> Result<u32, VolumeError> {
            let f = sys::open_regular(self.keyring_fd(), OsStr::new(name), libc::O_RDONLY)?;
            let mut buf = [0u8; crate::format::keyring::PEEK_LEN];
            let n = sys::read_at_most(&f, &mut buf, 0)?;
            Ok(crate::format::keyring::peek_generation(&buf[..n]).map_err(KeyringError::from)?)
        };
        peek(KEYRING_FILE).or_else(|_| peek(KEYRING_BACKUP))
    }

    /// Shared storage, with the keyring's lock or its store mutex held:
    /// loads the stored keyring when another host stored a newer one;
    /// refuses one older than what this daemon stored or loaded (a newer
    /// generation on disk is another host's change; an older one is a
    /// rollback, never followed). Whether it loaded one.
    fn follow_stored_keyring(&self) -> Result<bool, VolumeError> {
        let mine = self.keyring.read().generation();
        let stored = self.stored_keyring_generation()?;
        if stored == mine {
            return Ok(false);
        }
        if stored < mine {
            return Err(VolumeError::SharedChange(format!(
                "the stored keyring (generation {stored}) is older than the one this daemon stored or loaded ({mine}): refusing to follow or overwrite it (a rolled-back keyring?)"
            )));
        }
        let bytes = crate::keyring::read_copy(self.keyring_fd(), KEYRING_FILE)
            .or_else(|_| crate::keyring::read_copy(self.keyring_fd(), KEYRING_BACKUP))?;
        let next = self.keyring.read().reload(&bytes).map_err(|e| {
            VolumeError::SharedChange(format!(
                "another host stored a keyring this daemon cannot open with the key it unlocked ({e}); remount to unlock it afresh"
            ))
        })?;
        if next.generation() < mine {
            return Err(VolumeError::SharedChange(format!(
                "the stored keyring (generation {}) is older than this daemon's ({mine})",
                next.generation()
            )));
        }
        self.install_keyring(next);
        Ok(true)
    }

    /// Shared storage: loads the keyring another host stored, if it is
    /// newer (a look at its first bytes when it is not). Whether it loaded
    /// one. Nothing to do otherwise.
    pub fn refresh_keyring(&self) -> Result<bool, VolumeError> {
        if self.shared.is_none() {
            return Ok(false);
        }
        if self.stored_keyring_generation()? == self.keyring.read().generation() {
            return Ok(false);
        }
        let _one_at_a_time = self.keyring_store.lock();
        self.follow_stored_keyring()
    }

    /// Changes the unlock secret: re-seals the keyring (never file data);
    /// on a layout-1 keyring, then records the new KDF parameters in the
    /// config. (Key policy calls this through an audited keyring change.)
    pub fn change_secret(
        &self,
        secret: &UnlockSecret,
        params: Argon2Params,
    ) -> Result<(), VolumeError> {
        let kdf = self.update_keyring(|k| k.change_secret(secret, params))?;
        self.after_secret_change(kdf)
    }

    /// Records a layout-1 keyring's new KDF in the config (nothing for
    /// layout 2).
    pub fn after_secret_change(
        &self,
        kdf: Option<(KekSource, [u8; 16])>,
    ) -> Result<(), VolumeError> {
        let Some((src, salt)) = kdf else {
            return Ok(());
        };
        let mut c = self.config.write();
        let mut next = c.clone();
        next.kdf = Some(kdf_config(src, salt));
        self.store_config(&next)?;
        *c = next;
        Ok(())
    }

    /// Writes a new config durably (e.g. a changed rotation period).
    pub fn store_config(&self, config: &VolumeConfig) -> Result<(), VolumeError> {
        self.check_writable()?;
        sys::write_durably(
            self.root(),
            CONFIG_FILE,
            config.to_toml().as_bytes(),
            CONFIG_MODE,
        )?;
        Ok(())
    }

    /// The files holding the keyring, its copy, the config and the grant
    /// store that other users may read (group or other permission bits
    /// set): each as a warning to show at mount. The keyring is what a
    /// passphrase is guessed against offline; `init` and every rewrite make
    /// them 0600, but an older volume, a copy or a restore may not.
    pub fn loose_permissions(&self) -> Vec<String> {
        use crate::format::reserved::GRANTS_FILE;
        [KEYRING_FILE, KEYRING_BACKUP, CONFIG_FILE, GRANTS_FILE]
            .iter()
            .filter_map(|name| {
                let dir = if name.starts_with(KEYRING_FILE) {
                    self.keyring_fd()
                } else {
                    self.root()
                };
                let st = sys::fstatat(dir, OsStr::new(name)).ok()?;
                let mode = st.st_mode & 0o777;
                (st.st_mode & libc::S_IFMT == libc::S_IFREG && mode & 0o077 != 0).then(|| {
                    format!(
                        "{} is mode {mode:04o}: other users can read it{}; run chmod 600 {}",
                        self.cipherdir.join(name).display(),
                        if name.starts_with(KEYRING_FILE) {
                            " (and guess the passphrase against it offline)"
                        } else {
                            ""
                        },
                        self.cipherdir.join(name).display()
                    )
                })
            })
            .collect()
    }

    /// Whether `cipherdir` holds a volume's files (used to print good errors).
    pub fn looks_like_volume(cipherdir: &Path) -> bool {
        let Ok(root) = sys::open_dir_path(cipherdir) else {
            return false;
        };
        [CONFIG_FILE, KEYRING_FILE, KEYRING_BACKUP]
            .iter()
            .any(|n| sys::fstatat(root.as_fd(), OsStr::new(n)).is_ok())
    }

    /// The cipher directory.
    pub fn cipherdir(&self) -> &Path {
        &self.cipherdir
    }

    /// An `O_PATH` descriptor of the cipher directory (the root's backing
    /// directory), opened through the fd held since the volume was opened
    /// (not through its path again).
    pub fn root_fd(&self) -> Result<std::os::fd::OwnedFd, VolumeError> {
        Ok(sys::openat(
            self.root(),
            OsStr::new("."),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?)
    }

    /// The cipher directory's fd: reach sealfs's own files in it with the
    /// `*at` helpers of [`sys`], never through [`Volume::cipherdir`]'s path.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The config.
    pub fn config(&self) -> VolumeConfig {
        self.config.read().clone()
    }

    /// Applies `change` to a copy of the config, stores the copy durably,
    /// and only then makes it current (like [`Volume::update_keyring`]).
    /// What may change (the rotation period) is key policy's business.
    pub fn update_config<T>(
        &self,
        change: impl FnOnce(&mut VolumeConfig) -> Result<T, ConfigError>,
    ) -> Result<T, VolumeError> {
        let mut c = self.config.write();
        let mut next = c.clone();
        let out = change(&mut next)?;
        self.store_config(&next)?;
        *c = next;
        Ok(out)
    }

    /// Read-only mount?
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The volume id.
    pub fn volume_id(&self) -> [u8; 16] {
        self.volume_id
    }

    /// The keyring (for status and rotation).
    pub fn keyring(&self) -> &RwLock<Keyring> {
        &self.keyring
    }

    fn open_record(
        &self,
        kind: RecordKind,
        bytes: &[u8],
        ctx: &EncryptionContext<'_>,
    ) -> Result<(SealedRecord, SecretKey, usize), VolumeError> {
        let rec = SealedRecord::decode(kind, bytes)?;
        let open = || {
            let kr = self.keyring.read();
            rec.open(&self.volume_id, ctx, &|v| kr.wrapper(v, kind))
        };
        let (key, slot) = match open() {
            // Shared storage: wrapped under a version another host made
            // and this daemon has not loaded yet: follow, then try again.
            Err(HeaderError::KeyVersionUnavailable(_))
                if self.shared.is_some() && self.refresh_keyring().unwrap_or(false) =>
            {
                open()?
            }
            r => r?,
        };
        if let Some(s) = &rec.slots[slot] {
            crate::metrics::key_use(crate::metrics::KeyUse::Unwrap, s.key_version);
        }
        Ok((rec, key, slot))
    }

    fn primary_wrapper(
        &self,
        kind: RecordKind,
    ) -> Result<(u32, crate::crypto::SealingKey), VolumeError> {
        let key = self.keyring.read().default_key_id();
        self.key_wrapper(key, kind)
    }

    // ---------------------------------------------------------------- directories

    fn write_dir_record(
        &self,
        dir: BorrowedFd<'_>,
        id: [u8; 16],
        key: &SecretKey,
        ctx: &EncryptionContext<'_>,
        wrapping: (u32, crate::crypto::SealingKey),
        durable: bool,
    ) -> Result<Directory, VolumeError> {
        let (v, w) = wrapping;
        let rec = SealedRecord::create(RecordKind::Dir, &self.volume_id, id, key, v, &w, ctx)?;
        let bytes = rec.encode();
        for (name, sync) in [(DIR_RECORD, durable), (DIR_RECORD_BACKUP, false)] {
            let fd = sys::openat(
                dir,
                OsStr::new(name),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )?;
            let f = File::from(fd);
            sys::write_all_at(&f, &bytes, 0)?;
            if sync {
                f.sync_data()?;
            }
        }
        Ok(Directory {
            id,
            names: self.name_cipher(key, id),
            key: key.clone(),
            key_version: v,
        })
    }

    /// Creates the directory record of a freshly made backing directory `dir`.
    /// The record is not synced: the caller must call
    /// [`Volume::persist_dir_record`] before anything below the directory is
    /// made durable (fsync of a child), and soon after in any case.
    pub fn init_dir(
        &self,
        dir: BorrowedFd<'_>,
        ctx: &EncryptionContext<'_>,
    ) -> Result<Directory, VolumeError> {
        let key = self.keyring.read().default_key_id();
        self.init_dir_with_key(dir, ctx, key)
    }

    /// [`Volume::init_dir`] with the record wrapped by key `key` (the key
    /// of the subtree it is made in).
    pub fn init_dir_with_key(
        &self,
        dir: BorrowedFd<'_>,
        ctx: &EncryptionContext<'_>,
        key: u32,
    ) -> Result<Directory, VolumeError> {
        self.check_writable()?;
        let wrapping = self.key_wrapper(key, RecordKind::Dir)?;
        self.write_dir_record(
            dir,
            random_id()?,
            &SecretKey::generate()?,
            ctx,
            wrapping,
            false,
        )
    }

    /// Makes both copies of a directory's record durable.
    pub fn persist_dir_record(&self, dir: BorrowedFd<'_>) -> Result<(), VolumeError> {
        for name in [DIR_RECORD, DIR_RECORD_BACKUP] {
            sys::open_regular(dir, OsStr::new(name), libc::O_RDONLY)?.sync_data()?;
        }
        Ok(())
    }

    fn read_dir_record(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        ctx: &EncryptionContext<'_>,
    ) -> Result<(SealedRecord, SecretKey, usize), VolumeError> {
        let buf = read_record_copy(dir, name)?;
        self.open_record(RecordKind::Dir, &buf, ctx)
    }

    /// Loads and opens the record of directory `dir` bound to `ctx`, falling
    /// back to the second copy (and restoring the first from it).
    pub fn load_dir(
        &self,
        dir: BorrowedFd<'_>,
        ctx: &EncryptionContext<'_>,
    ) -> Result<Directory, VolumeError> {
        let first = self.read_dir_record(dir, DIR_RECORD, ctx);
        let (rec, key, slot) = match first {
            Ok(opened) => opened,
            Err(e1) => match self.read_dir_record(dir, DIR_RECORD_BACKUP, ctx) {
                Ok((rec, key, slot)) => {
                    if !self.read_only {
                        let _locked = self.lock_resource(Resource::DirRecord(rec.id));
                        let _ = self.replace_dir_record(dir, &[DIR_RECORD], &rec);
                    }
                    (rec, key, slot)
                }
                Err(e2) => {
                    tracing::warn!("directory record unreadable: {e1}; backup: {e2}");
                    return Err(match (e1, e2) {
                        (VolumeError::Io(a), VolumeError::Io(_))
                            if a.kind() == io::ErrorKind::NotFound =>
                        {
                            VolumeError::DirRecordLost
                        }
                        (_, e) if e.is_integrity() => e,
                        (e, _) => e,
                    });
                }
            },
        };
        Ok(Directory {
            id: rec.id,
            names: self.name_cipher(&key, rec.id),
            key,
            key_version: rec.slots[slot].map_or(0, |s| s.key_version),
        })
    }

    fn replace_dir_record(
        &self,
        dir: BorrowedFd<'_>,
        names: &[&str],
        rec: &SealedRecord,
    ) -> Result<(), VolumeError> {
        let bytes = rec.encode();
        for name in names {
            let tmp = reserved::temp_name(name);
            sys::remove_stale_regular(dir, OsStr::new(&tmp))?;
            let replaced = (|| {
                let f = sys::create_new_regular(dir, OsStr::new(&tmp), 0o600)?;
                sys::write_all_at(&f, &bytes, 0)?;
                f.sync_data()?;
                sys::renameat2(dir, OsStr::new(&tmp), dir, OsStr::new(name), 0)
            })();
            if let Err(e) = replaced {
                // E.g. ENOSPC: the record in place is untouched; do not leave
                // a partial temporary file taking space.
                let _ = sys::unlinkat(dir, OsStr::new(&tmp), false);
                return Err(e.into());
            }
        }
        sys::fsync_dir(dir)?;
        Ok(())
    }

    /// Step 1 of a directory rename: both copies of the record get a slot for
    /// `new` next to the slot for `old` (durably), so the directory opens
    /// under either binding until [`Volume::finish_rebind_dir`].
    pub fn begin_rebind_dir(
        &self,
        dir: BorrowedFd<'_>,
        d: &Directory,
        old: &EncryptionContext<'_>,
        new: &EncryptionContext<'_>,
    ) -> Result<(), VolumeError> {
        self.check_writable()?;
        // Shared storage: read and rewritten under the record's lock.
        let _locked = self.lock_resource(Resource::DirRecord(d.id))?;
        let (mut rec, _, slot) = self
            .read_dir_record(dir, DIR_RECORD, old)
            .or_else(|_| self.read_dir_record(dir, DIR_RECORD_BACKUP, old))?;
        // The version the record has on disk, not the cached directory's
        // (a rewrap may have moved it to another key since it was loaded).
        let on_disk = rec.slots[slot].map_or(self.dir_key_version(d), |s| s.key_version);
        let (v, w) = self.same_key_wrapper(on_disk, RecordKind::Dir)?;
        let fresh = rec.make_slot(
            &self.volume_id,
            &d.key,
            v,
            &w,
            crate::format::header::Binding::Path(new),
        )?;
        rec.slots = [rec.slots[slot], Some(fresh)];
        self.replace_dir_record(dir, &[DIR_RECORD, DIR_RECORD_BACKUP], &rec)
    }

    /// Step 3 of a directory rename (after the backing rename): keep only the
    /// slot for `new`.
    pub fn finish_rebind_dir(
        &self,
        dir: BorrowedFd<'_>,
        d: &Directory,
        new: &EncryptionContext<'_>,
    ) -> Result<(), VolumeError> {
        let (v, w) = self.same_key_wrapper(self.dir_key_version(d), RecordKind::Dir)?;
        self.finish_rebind_dir_with(dir, d, new, (v, w))
    }

    /// [`Volume::finish_rebind_dir`] with the record wrapped by `wrapping`
    /// (a rewrap to another key).
    pub(crate) fn finish_rebind_dir_with(
        &self,
        dir: BorrowedFd<'_>,
        d: &Directory,
        new: &EncryptionContext<'_>,
        (v, w): (u32, crate::crypto::SealingKey),
    ) -> Result<(), VolumeError> {
        let rec = SealedRecord::create(RecordKind::Dir, &self.volume_id, d.id, &d.key, v, &w, new)?;
        let _locked = self.lock_resource(Resource::DirRecord(d.id))?;
        self.replace_dir_record(dir, &[DIR_RECORD, DIR_RECORD_BACKUP], &rec)?;
        if v != self.dir_key_version(d) {
            self.note_dir_key_version(d.id, v);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- files

    /// Writes the header block of a new, empty regular file and returns it open.
    pub fn init_file(
        &self,
        file: File,
        ctx: &EncryptionContext<'_>,
    ) -> Result<SealedFile, VolumeError> {
        let key = self.keyring.read().default_key_id();
        self.init_file_with_key(file, ctx, key)
    }

    /// [`Volume::init_file`] with the data key wrapped by key `key` (the
    /// key of the subtree the file is made in).
    pub fn init_file_with_key(
        &self,
        file: File,
        ctx: &EncryptionContext<'_>,
        key: u32,
    ) -> Result<SealedFile, VolumeError> {
        self.check_writable()?;
        let (v, w) = self.key_wrapper(key, RecordKind::File)?;
        let data_key = SecretKey::generate()?;
        let id = random_id()?;
        let rec =
            SealedRecord::create(RecordKind::File, &self.volume_id, id, &data_key, v, &w, ctx)?;
        let format = self.content_format();
        Ok(SealedFile::create(file, &rec.encode(), &data_key, id, format)?.with_key_version(v))
    }

    /// How this volume's file content is laid out (its config's features).
    pub fn content_format(&self) -> ContentFormat {
        self.config.read().content_format()
    }

    /// Opens the content of an existing file reached as `ctx` (its path
    /// slot, or its link table for a linked file; see [`Volume::open_header`]).
    pub fn open_file(
        &self,
        file: File,
        ctx: &EncryptionContext<'_>,
    ) -> Result<SealedFile, VolumeError> {
        let md = file.metadata()?;
        if !md.is_file() {
            // Something else was swapped in for the file (a FIFO, a
            // device: opened without blocking, never read).
            return Err(VolumeError::Io(io::Error::other(
                "the backing object is not a regular file",
            )));
        }
        plaintext_size(md.len()).map_err(|_| VolumeError::Truncated)?;
        let h = self.open_header(&file, ctx)?;
        let version = h.rec.slots[h.slot].map_or(0, |s| s.key_version);
        let format = self.content_format();
        Ok(SealedFile::open(file, &h.key, h.rec.id, format)?.with_key_version(version))
    }

    pub(crate) fn check_writable(&self) -> Result<(), VolumeError> {
        if self.read_only {
            Err(VolumeError::ReadOnly)
        } else {
            Ok(())
        }
    }
}
