//! Files of a volume by plaintext path, without mounting: open a cipher
//! directory with its unlock secret, then list, read and write.
//!
//! A thin layer over [`Volume`]: it resolves paths one component at a time
//! (encrypting each name under its parent directory's key, opening each
//! directory record bound to its place) and hands out readers and writers
//! over [`SealedFile`](crate::volume::content::SealedFile). The on-disk
//! result is the same as through a mount.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use sealfs::{UnlockSecret, Vault};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let secret = UnlockSecret::from_passfile("/root/.vault-pass".as_ref())?;
//! let vault = Vault::open("/srv/vault.enc".as_ref(), &secret)?;
//! vault.create_dir_all("notes/2026".as_ref())?;
//! let mut w = vault.create("notes/2026/todo.txt".as_ref())?;
//! w.write_all(b"rotate the keys\n")?;
//! w.finish()?; // flushed and synced
//! for entry in vault.list_dir("notes".as_ref())? {
//!     println!("{:?} {:?}", entry.name, entry.kind);
//! }
//! let mut text = String::new();
//! vault.open_file("notes/2026/todo.txt".as_ref())?.read_to_string(&mut text)?;
//! # Ok(()) }
//! ```
//!
//! A writable [`Vault`] holds the volume's `sealfs.lock` like a mount does:
//! opening one while the volume is mounted fails with
//! [`VolumeError::InUse`]. [`Vault::open_read_only`] takes no lock and works
//! beside a mount.
//!
//! Owns: path resolution and the create order of a new entry (long-name
//! sidecar, backing entry, header or directory record, then syncs).
//! Must never: put key material in errors or `Debug` output.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::crypto::Argon2Params;
use crate::format::header::EncryptionContext;
use crate::format::keyring::KeyState;
use crate::format::layout::plaintext_size;
use crate::format::names::BackingName;
use crate::format::reserved;
use crate::keyring::{UnlockSecret, Unlocker};
use crate::kms::{DeletionPlan, KeyError, KeyService, KeyStatus, RotationSchedule, Trimmed};
use crate::volume::backing::{self, TimeSpec};
use crate::volume::namespace;
use crate::volume::walk::{Census, RewrapProgress, RewrapReport};
use crate::volume::{Directory, Volume, VolumeError};

/// Errors of [`Vault`]: a path problem, or one of the volume layer.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The volume layer failed (wrong secret, not a volume, in use, integrity, I/O).
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// No such file or directory in the volume.
    #[error("{0}: no such file or directory in the volume")]
    NotFound(PathBuf),
    /// A path component (or the target) is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// The target is not a regular file.
    #[error("{0}: not a regular file")]
    NotAFile(PathBuf),
    /// The target is not a symbolic link.
    #[error("{0}: not a symbolic link")]
    NotASymlink(PathBuf),
    /// The target exists already.
    #[error("{0}: already exists")]
    AlreadyExists(PathBuf),
    /// The path is empty, or uses `..`.
    #[error("{0}: not a usable path inside the volume (empty, or uses '..')")]
    InvalidPath(PathBuf),
    /// The key is disabled (`sealfs ctl disable`): file access is refused.
    #[error("the volume's key is disabled; enable it with 'sealfs ctl enable' on a mount")]
    Disabled,
    /// Key policy refused to open the volume (a rollback was detected, or
    /// the KMS behind the keyslot refused).
    #[error(transparent)]
    Keys(#[from] KeyError),
}

impl VaultError {
    /// Whether the unlock secret was wrong (or of the wrong kind).
    pub fn is_wrong_secret(&self) -> bool {
        matches!(self, VaultError::Volume(VolumeError::Keyring(k)) if k.is_wrong_secret())
    }
}

impl From<VaultError> for io::Error {
    fn from(e: VaultError) -> io::Error {
        let kind = match &e {
            VaultError::NotFound(_) => io::ErrorKind::NotFound,
            VaultError::AlreadyExists(_) => io::ErrorKind::AlreadyExists,
            VaultError::InvalidPath(_) => io::ErrorKind::InvalidInput,
            VaultError::Disabled => io::ErrorKind::PermissionDenied,
            VaultError::Volume(v) if v.is_integrity() => io::ErrorKind::InvalidData,
            VaultError::Volume(VolumeError::Io(io)) => io.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// What a directory entry is (the volume layer's one kind type).
pub use crate::volume::EntryKind;

/// One entry of [`Vault::list_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Plaintext name.
    pub name: OsString,
    /// What it is.
    pub kind: EntryKind,
    /// Plaintext size of a regular file (0 for other kinds).
    pub size: u64,
}

/// Attributes of an entry ([`Vault::metadata`], [`Vault::list_dir_metadata`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`0o7777`; 0o777 for a symlink).
    pub mode: u32,
    /// Plaintext size of a regular file, target length of a symlink, the
    /// backing size of anything else.
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub accessed: SystemTime,
    /// Last modification of the content.
    pub modified: SystemTime,
    /// Names of a file (its backing inode's link count: exact).
    pub nlink: u64,
    /// The backing inode number: the same for every name of a file.
    pub ino: u64,
}

fn time_of(secs: i64, nsec: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn timespec_of(t: SystemTime) -> TimeSpec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => TimeSpec::At(d.as_secs() as i64, d.subsec_nanos() as i64),
        Err(e) => {
            // Before 1970: whole seconds down, then the nanoseconds up.
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nsec = d.subsec_nanos() as i64;
            if nsec > 0 {
                secs -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            TimeSpec::At(secs, nsec)
        }
    }
}

/// Backing name prefix of a file [`Vault::create_staged`] is writing; a
/// leftover one (an interrupted run) is removed by
/// [`Vault::remove_staged_leftovers`], or by `fsck --salvage` (a `*.tmp`).
pub use crate::format::reserved::STAGED_PREFIX;

/// One master key version, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    /// Version number, from 1.
    pub version: u32,
    /// Lifecycle state.
    pub state: KeyState,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Whether new data keys are wrapped under it.
    pub primary: bool,
}

/// An opened volume, accessed by plaintext path. See the [module docs](self).
#[derive(Debug)]
pub struct Vault {
    vol: Volume,
}

/// An unlocked directory and its backing `O_PATH` descriptor.
struct OpenDir {
    fd: OwnedFd,
    dir: Directory,
}

/// The components of a relative path inside the volume ("" and "/" are the root).
fn components(path: &Path) -> Result<Vec<&OsStr>, VaultError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(VaultError::InvalidPath(path.to_path_buf()))
            }
        }
    }
    Ok(out)
}

fn path_err(e: io::Error, path: &Path) -> VaultError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => VaultError::NotFound(path.to_path_buf()),
        Some(libc::ENOTDIR) | Some(libc::ELOOP) => VaultError::NotADirectory(path.to_path_buf()),
        Some(libc::EEXIST) => VaultError::AlreadyExists(path.to_path_buf()),
        _ => VaultError::Volume(e.into()),
    }
}

fn is_kind(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

impl Vault {
    /// Opens `cipherdir` for reading and writing with the first provider
    /// of `unlock` that opens a keyslot (an [`UnlockSecret`] is one). Takes
    /// the volume's `sealfs.lock`: fails with [`VolumeError::InUse`] while
    /// it is mounted. A keyring older than the audit log or the KMS
    /// recorded is refused ([`KeyError::Rollback`]; `sealfs mount
    /// --accept-rollback` accepts one and records it).
    pub fn open(cipherdir: &Path, unlock: &dyn Unlocker) -> Result<Vault, VaultError> {
        let vol = Volume::open(cipherdir, unlock, false)?;
        crate::kms::anchor::check_or_refuse(&vol, false)?;
        Ok(Vault { vol })
    }

    /// Opens `cipherdir` for reading only (no lock; works beside a mount).
    pub fn open_read_only(cipherdir: &Path, unlock: &dyn Unlocker) -> Result<Vault, VaultError> {
        Ok(Vault {
            vol: Volume::open(cipherdir, unlock, true)?,
        })
    }

    /// The underlying volume (key management, census, rewrap).
    pub fn volume(&self) -> &Volume {
        &self.vol
    }

    fn root(&self) -> Result<OpenDir, VaultError> {
        let fd = self.vol.root_fd()?;
        let dir = self.vol.load_dir(fd.as_fd(), &EncryptionContext::ROOT)?;
        Ok(OpenDir { fd, dir })
    }

    /// The child directory `name` of `parent`.
    fn child_dir(
        &self,
        parent: &OpenDir,
        name: &OsStr,
        path: &Path,
    ) -> Result<OpenDir, VaultError> {
        let bn = parent
            .dir
            .names
            .encrypt_name(name.as_bytes())
            .map_err(VolumeError::from)?;
        let fd = backing::open_dir(parent.fd.as_fd(), OsStr::new(&bn.entry))
            .map_err(|e| path_err(e, path))?;
        let ctx = EncryptionContext {
            parent_dir_id: parent.dir.id,
            name: name.as_bytes(),
        };
        let dir = self.vol.load_dir(fd.as_fd(), &ctx)?;
        Ok(OpenDir { fd, dir })
    }

    fn dir_at(&self, comps: &[&OsStr]) -> Result<OpenDir, VaultError> {
        Ok(self.dir_chain_at(comps)?.0)
    }

    /// [`Vault::dir_at`], with the ids of the directories from the root
    /// down to it.
    fn dir_chain_at(&self, comps: &[&OsStr]) -> Result<(OpenDir, Vec<[u8; 16]>), VaultError> {
        let mut d = self.root()?;
        let mut chain = vec![d.dir.id];
        for (i, c) in comps.iter().enumerate() {
            let so_far: PathBuf = comps[..=i].iter().collect();
            // Errors name the path up to the component that failed.
            d = self.child_dir(&d, c, &so_far)?;
            chain.push(d.dir.id);
        }
        Ok((d, chain))
    }

    /// The parent directory of `path` and the last component.
    fn parent_of<'p>(&self, path: &'p Path) -> Result<(OpenDir, &'p OsStr), VaultError> {
        let (parent, name, _) = self.parent_and_key_of(path)?;
        Ok((parent, name))
    }

    /// [`Vault::parent_of`], and the key a new entry there gets: the
    /// nearest assigned ancestor's (`ctl key assign`), else the default
    /// key, as on a mount.
    fn parent_and_key_of<'p>(
        &self,
        path: &'p Path,
    ) -> Result<(OpenDir, &'p OsStr, u32), VaultError> {
        let comps = components(path)?;
        let (last, parents) = comps
            .split_last()
            .ok_or_else(|| VaultError::InvalidPath(path.to_path_buf()))?;
        let (parent, chain) = self.dir_chain_at(parents)?;
        Ok((parent, last, self.vol.key_for_chain(&chain)))
    }

    fn check_enabled(&self) -> Result<(), VaultError> {
        if self.vol.is_disabled() {
            Err(VaultError::Disabled)
        } else {
            Ok(())
        }
    }

    fn check_writable(&self) -> Result<(), VaultError> {
        self.check_enabled()?;
        if self.vol.read_only() {
            return Err(VolumeError::ReadOnly.into());
        }
        Ok(())
    }

    /// The entries of directory `path` ("" or "/" for the root), sorted by
    /// name. Entries whose names do not authenticate are skipped.
    pub fn list_dir(&self, path: &Path) -> Result<Vec<Entry>, VaultError> {
        let d = self.dir_at(&components(path)?)?;
        let mut out = Vec::new();
        for e in self.vol.list_dir(d.fd.as_fd(), &d.dir)? {
            let kind = e
                .file_type
                .map_or(EntryKind::Other, EntryKind::of_file_type);
            let size = match kind {
                EntryKind::File => backing::stat(d.fd.as_fd(), OsStr::new(&e.entry))
                    .ok()
                    .and_then(|st| plaintext_size(st.st_size as u64).ok())
                    .unwrap_or(0),
                _ => 0,
            };
            out.push(Entry {
                name: OsString::from_vec(e.name),
                kind,
                size,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Opens the regular file at `path` for reading.
    pub fn open_file(&self, path: &Path) -> Result<FileReader, VaultError> {
        self.check_enabled()?;
        let (parent, name) = self.parent_of(path)?;
        let bn = parent
            .dir
            .names
            .encrypt_name(name.as_bytes())
            .map_err(VolumeError::from)?;
        let entry = OsStr::new(&bn.entry);
        let st = backing::stat(parent.fd.as_fd(), entry).map_err(|e| path_err(e, path))?;
        if !is_kind(&st, libc::S_IFREG) {
            return Err(VaultError::NotAFile(path.to_path_buf()));
        }
        let fd = backing::open_regular(parent.fd.as_fd(), entry, libc::O_RDONLY)
            .map_err(|e| path_err(e, path))?;
        let ctx = EncryptionContext {
            parent_dir_id: parent.dir.id,
            name: name.as_bytes(),
        };
        let file = self.vol.open_file(fd, &ctx)?;
        Ok(FileReader::new(file))
    }

    /// The whole content of the regular file at `path`.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, VaultError> {
        let f = self.open_file(path)?;
        Ok(f.read_all()?)
    }

    /// Creates the regular file at `path` (mode 0666 less the umask), or
    /// truncates it if it exists, and returns a writer. Its parent must exist.
    /// A new file's data key is wrapped by the key of its subtree.
    pub fn create(&self, path: &Path) -> Result<FileWriter, VaultError> {
        self.check_writable()?;
        let (parent, name, key) = self.parent_and_key_of(path)?;
        let _ns = self.vol.namespace().read();
        let bn = parent
            .dir
            .names
            .encrypt_name(name.as_bytes())
            .map_err(VolumeError::from)?;
        let entry = OsStr::new(&bn.entry);
        let pfd = parent.fd.as_fd();
        let ctx = EncryptionContext {
            parent_dir_id: parent.dir.id,
            name: name.as_bytes(),
        };
        let file = match backing::stat(pfd, entry) {
            Ok(st) if is_kind(&st, libc::S_IFREG) => {
                let fd = backing::open_regular(pfd, entry, libc::O_RDWR)
                    .map_err(|e| path_err(e, path))?;
                let mut f = self.vol.open_file(fd, &ctx)?;
                f.set_len(0)?;
                f
            }
            Ok(_) => return Err(VaultError::NotAFile(path.to_path_buf())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let mut new =
                    namespace::create_file(pfd, &bn, 0o666).map_err(|e| path_err(e, path))?;
                let f = new.seal_file_with_key(&self.vol, &ctx, key)?;
                new.keep_file(f.backing()).map_err(|e| path_err(e, path))?;
                f
            }
            Err(e) => return Err(path_err(e, path)),
        };
        Ok(FileWriter::new(file, parent.fd))
    }

    /// Writes `data` as the whole content of the file at `path` (created or
    /// truncated), durably.
    pub fn write(&self, path: &Path, data: &[u8]) -> Result<(), VaultError> {
        let mut w = self.create(path)?;
        w.write_all(data).map_err(VolumeError::from)?;
        w.finish()
    }

    /// Creates the directory at `path` (mode 0777 less the umask), durably.
    /// Its parent must exist.
    /// Its record is wrapped by the key of its subtree.
    pub fn create_dir(&self, path: &Path) -> Result<(), VaultError> {
        self.check_writable()?;
        let (parent, name, key) = self.parent_and_key_of(path)?;
        let _ns = self.vol.namespace().read();
        let bn = parent
            .dir
            .names
            .encrypt_name(name.as_bytes())
            .map_err(VolumeError::from)?;
        let ctx = EncryptionContext {
            parent_dir_id: parent.dir.id,
            name: name.as_bytes(),
        };
        namespace::create_dir(parent.fd.as_fd(), &bn, 0o777)
            .map_err(|e| path_err(e, path))?
            .finish_dir_durably(&self.vol, &ctx, key)?;
        Ok(())
    }

    /// Creates the directory at `path` and any missing parents.
    pub fn create_dir_all(&self, path: &Path) -> Result<(), VaultError> {
        let comps = components(path)?;
        for i in 1..=comps.len() {
            let p: PathBuf = comps[..i].iter().collect();
            match self.create_dir(&p) {
                Ok(()) | Err(VaultError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // An existing non-directory on the way shows up here.
        self.dir_at(&comps).map(|_| ())
    }

    /// The parent of `path`, its backing name there, and the plaintext name.
    fn locate<'p>(&self, path: &'p Path) -> Result<(OpenDir, BackingName, &'p OsStr), VaultError> {
        let (parent, name) = self.parent_of(path)?;
        let bn = parent
            .dir
            .names
            .encrypt_name(name.as_bytes())
            .map_err(VolumeError::from)?;
        Ok((parent, bn, name))
    }

    fn metadata_of(
        &self,
        st: &libc::stat,
        symlink_target: impl FnOnce() -> Result<u64, VaultError>,
    ) -> Result<Metadata, VaultError> {
        let kind = EntryKind::of_mode(st.st_mode);
        let size = match kind {
            EntryKind::File => {
                plaintext_size(st.st_size as u64).map_err(|_| VolumeError::Truncated)?
            }
            EntryKind::Symlink => symlink_target()?,
            _ => st.st_size as u64,
        };
        Ok(Metadata {
            kind,
            mode: if kind == EntryKind::Symlink {
                0o777
            } else {
                st.st_mode & 0o7777
            },
            size,
            uid: st.st_uid,
            gid: st.st_gid,
            accessed: time_of(st.st_atime, st.st_atime_nsec),
            modified: time_of(st.st_mtime, st.st_mtime_nsec),
            nlink: st.st_nlink,
            ino: st.st_ino,
        })
    }

    /// The attributes of the entry at `path` ("" or "/" for the root),
    /// without following a symlink.
    pub fn metadata(&self, path: &Path) -> Result<Metadata, VaultError> {
        if components(path)?.is_empty() {
            let root = self.root()?;
            let mut st =
                backing::stat(root.fd.as_fd(), OsStr::new("")).map_err(VolumeError::from)?;
            let attrs = self.vol.root_attrs(&root.dir)?;
            crate::volume::rootattrs::present(attrs.as_ref(), &mut st);
            return self.metadata_of(&st, || Ok(0));
        }
        let (parent, bn, _) = self.locate(path)?;
        let entry = OsStr::new(&bn.entry);
        let st = backing::stat(parent.fd.as_fd(), entry).map_err(|e| path_err(e, path))?;
        self.metadata_of(&st, || {
            Ok(self.open_link(parent.fd.as_fd(), entry, path)?.len() as u64)
        })
    }

    /// The entries of directory `path` with their attributes, sorted by name.
    pub fn list_dir_metadata(&self, path: &Path) -> Result<Vec<(OsString, Metadata)>, VaultError> {
        let d = self.dir_at(&components(path)?)?;
        let mut out = Vec::new();
        for e in self.vol.list_dir(d.fd.as_fd(), &d.dir)? {
            let entry = OsStr::new(&e.entry);
            let name = OsString::from_vec(e.name);
            let st = match backing::stat(d.fd.as_fd(), entry) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(VolumeError::from(e).into()),
            };
            let full = path.join(&name);
            let md = self.metadata_of(&st, || {
                Ok(self.open_link(d.fd.as_fd(), entry, &full)?.len() as u64)
            })?;
            out.push((name, md));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn open_link(
        &self,
        dir: BorrowedFd<'_>,
        entry: &OsStr,
        path: &Path,
    ) -> Result<Vec<u8>, VaultError> {
        let stored = backing::read_link(dir, entry).map_err(|e| path_err(e, path))?;
        // Symlink targets are sealed under the root directory's key.
        Ok(self
            .root()?
            .dir
            .names
            .open_symlink_target(&stored)
            .map_err(VolumeError::from)?)
    }

    /// The target of the symlink at `path`.
    pub fn read_link(&self, path: &Path) -> Result<PathBuf, VaultError> {
        self.check_enabled()?;
        let (parent, bn, _) = self.locate(path)?;
        let entry = OsStr::new(&bn.entry);
        let st = backing::stat(parent.fd.as_fd(), entry).map_err(|e| path_err(e, path))?;
        if !is_kind(&st, libc::S_IFLNK) {
            return Err(VaultError::NotASymlink(path.to_path_buf()));
        }
        Ok(PathBuf::from(OsString::from_vec(self.open_link(
            parent.fd.as_fd(),
            entry,
            path,
        )?)))
    }

    /// Creates a symlink at `link` pointing to `target` (stored encrypted).
    /// Its parent must exist and `link` must not.
    pub fn symlink(&self, target: &Path, link: &Path) -> Result<(), VaultError> {
        self.check_writable()?;
        let sealed = self
            .root()?
            .dir
            .names
            .seal_symlink_target(target.as_os_str().as_bytes())
            .map_err(VolumeError::from)?;
        let (parent, bn, _) = self.locate(link)?;
        let _ns = self.vol.namespace().read();
        let pfd = parent.fd.as_fd();
        namespace::create_symlink(pfd, &bn, &sealed).map_err(|e| path_err(e, link))?;
        backing::sync_dir(pfd).map_err(VolumeError::from)?;
        Ok(())
    }

    /// Removes the file or symlink (or other non-directory) at `path`.
    /// A name of a linked file also leaves the file's link table, as
    /// through the mount (else the table would still vouch for it).
    pub fn remove_file(&self, path: &Path) -> Result<(), VaultError> {
        self.check_writable()?;
        let (parent, bn, name) = self.locate(path)?;
        let _ns = self.vol.namespace().write();
        let ctx = EncryptionContext {
            parent_dir_id: parent.dir.id,
            name: name.as_bytes(),
        };
        let end = namespace::RenameEnd {
            dir: parent.fd.as_fd(),
            name: &bn,
            ctx: &ctx,
        };
        match namespace::remove_name(&self.vol, end) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                Err(VaultError::NotAFile(path.to_path_buf()))
            }
            Err(e) => Err(path_err(e, path)),
        }
    }

    /// Runs `f` on the backing object of `path` (the root for "" or "/").
    fn on_backing(
        &self,
        path: &Path,
        f: impl FnOnce(BorrowedFd<'_>, &OsStr, &libc::stat) -> io::Result<()>,
    ) -> Result<(), VaultError> {
        self.check_writable()?;
        if components(path)?.is_empty() {
            let root = self.root()?;
            let st = backing::stat(root.fd.as_fd(), OsStr::new("")).map_err(VolumeError::from)?;
            return f(root.fd.as_fd(), OsStr::new(""), &st).map_err(|e| path_err(e, path));
        }
        let (parent, bn, _) = self.locate(path)?;
        let entry = OsStr::new(&bn.entry);
        let st = backing::stat(parent.fd.as_fd(), entry).map_err(|e| path_err(e, path))?;
        f(parent.fd.as_fd(), entry, &st).map_err(|e| path_err(e, path))
    }

    /// Sets the permission bits (`0o7777`) of the entry at `path`; a symlink
    /// has none (nothing is done).
    pub fn set_permissions(&self, path: &Path, mode: u32) -> Result<(), VaultError> {
        if components(path)?.is_empty() {
            return self.change_root(Some(mode), None, None);
        }
        self.on_backing(path, |d, n, st| {
            if is_kind(st, libc::S_IFLNK) {
                return Ok(());
            }
            backing::set_mode(d, n, mode & 0o7777)
        })
    }

    /// Sets the access and modification times of the entry at `path` (of
    /// a symlink itself, not its target).
    pub fn set_times(
        &self,
        path: &Path,
        accessed: SystemTime,
        modified: SystemTime,
    ) -> Result<(), VaultError> {
        self.on_backing(path, |d, n, _| {
            backing::set_times(d, n, timespec_of(accessed), timespec_of(modified))
        })
    }

    /// Changes the owner and/or group of the entry at `path` (not following
    /// a symlink). Needs the privileges chown(2) needs.
    pub fn set_owner(
        &self,
        path: &Path,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), VaultError> {
        if components(path)?.is_empty() {
            return self.change_root(None, uid, gid);
        }
        self.on_backing(path, |d, n, _| backing::set_owner(d, n, uid, gid))
    }

    /// chmod/chown of the volume's root: its presented attributes
    /// (`sealfs.root`), never the cipher directory's own mode.
    fn change_root(
        &self,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), VaultError> {
        self.check_writable()?;
        let root = self.root()?;
        let st = backing::stat(root.fd.as_fd(), OsStr::new("")).map_err(VolumeError::from)?;
        self.vol.change_root_attrs(&root.dir, &st, mode, uid, gid)?;
        Ok(())
    }

    /// Like [`Vault::create`], but the content goes to a hidden temp file
    /// (already bound to `path`), which [`FileWriter::finish`] renames over
    /// `path` in one step (replacing a file or symlink there). Until then,
    /// `path` keeps its old state; dropping the writer unfinished removes
    /// the temp file. The new file has mode 0600 unless
    /// [`FileWriter::set_permissions`] says otherwise.
    pub fn create_staged(&self, path: &Path) -> Result<FileWriter, VaultError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.check_writable()?;
        let (parent, name, key) = self.parent_and_key_of(path)?;
        let bn = parent
            .dir
            .names
            .encrypt_name(name.as_bytes())
            .map_err(VolumeError::from)?;
        let _ns = self.vol.namespace().read();
        let temp = reserved::staged_name(std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let ctx = EncryptionContext {
            parent_dir_id: parent.dir.id,
            name: name.as_bytes(),
        };
        let file =
            namespace::create_staged(&self.vol, parent.fd.as_fd(), &temp, &ctx, (0o600, key))
                .map_err(|e| match e {
                    VolumeError::Io(e) => path_err(e, path),
                    e => e.into(),
                })?;
        Ok(FileWriter::staged(file, parent.fd, temp, bn, path))
    }

    /// Removes the temp files an interrupted [`Vault::create_staged`] left
    /// in directory `path`; returns how many. Call it only while no writer
    /// of this process is open there.
    pub fn remove_staged_leftovers(&self, path: &Path) -> Result<usize, VaultError> {
        self.check_writable()?;
        let d = self.dir_at(&components(path)?)?;
        Ok(namespace::remove_staged_leftovers(d.fd.as_fd()).map_err(VolumeError::from)?)
    }

    /// The master key versions, oldest first.
    pub fn key_versions(&self) -> Vec<KeyVersion> {
        let kr = self.vol.keyring().read();
        kr.versions()
            .iter()
            .map(|v| KeyVersion {
                version: v.version,
                state: v.state,
                created: v.created,
                primary: v.version == kr.primary(),
            })
            .collect()
    }

    /// Every regular file's plaintext path, grouped by the key version that
    /// wraps its data key (a full scan). Files whose header does not open
    /// (tampered, moved, or under a retired or destroyed version) are under
    /// `None`.
    pub fn files_by_key_version(&self) -> Result<BTreeMap<Option<u32>, Vec<PathBuf>>, VaultError> {
        let mut out: BTreeMap<Option<u32>, Vec<PathBuf>> = BTreeMap::new();
        self.vol.census_with(&mut |e| {
            if !e.is_dir {
                out.entry(e.key_version)
                    .or_default()
                    .push(PathBuf::from(OsStr::from_bytes(e.path)));
            }
        })?;
        for files in out.values_mut() {
            files.sort();
        }
        Ok(out)
    }
}

mod file;
mod links;
pub use file::{FileReader, FileWriter};

// ---------------------------------------------------------------- key management

/// Key management of an unmounted volume, through [`KeyService`] (the
/// rules `sealfs ctl` follows on a mount; nothing is audited here, as the
/// audit log records what happens through a mount). Each method is
/// [`Vault::keys`] and the [`KeyService`] method of the same name.
impl Vault {
    /// The key service of this vault's volume.
    pub fn keys(&self) -> KeyService<'_> {
        KeyService::offline(&self.vol)
    }

    /// The primary version, every version's state, the rotation schedule.
    pub fn key_status(&self) -> KeyStatus {
        self.keys().status()
    }

    /// Headers and directory records per key version (a full scan).
    pub fn census(&self) -> Result<Census, KeyError> {
        self.keys().census()
    }

    /// Makes a new master key version primary; returns it.
    pub fn rotate(&self) -> Result<u32, KeyError> {
        self.keys().rotate()
    }

    /// Re-wraps every header and directory record under the primary version.
    pub fn rewrap(&self, progress: &RewrapProgress) -> Result<RewrapReport, KeyError> {
        self.keys().rewrap(progress)
    }

    /// Retires every enabled version below `min_version` (see [`KeyService::trim`]).
    pub fn trim(&self, min_version: u32, force: bool) -> Result<Trimmed, KeyError> {
        self.keys().trim(min_version, force)
    }

    /// Re-enables a retired version.
    pub fn untrim(&self, version: u32) -> Result<(), KeyError> {
        self.keys().untrim(version)
    }

    /// Schedules a retired version's destruction after `wait` (7 days if
    /// `None`); a dry run unless `confirm`.
    pub fn schedule_deletion(
        &self,
        version: u32,
        wait: Option<&str>,
        confirm: bool,
    ) -> Result<DeletionPlan, KeyError> {
        self.keys().schedule_deletion(version, wait, confirm)
    }

    /// Cancels a scheduled destruction.
    pub fn cancel_deletion(&self, version: u32) -> Result<(), KeyError> {
        self.keys().cancel_deletion(version)
    }

    /// Disables the key: file access is refused until [`Vault::enable`].
    pub fn disable(&self) -> Result<(), KeyError> {
        self.keys().disable()
    }

    /// Enables the key again.
    pub fn enable(&self) -> Result<(), KeyError> {
        self.keys().enable()
    }

    /// Sets the automatic rotation period ("90d"), or turns it off (`None`).
    pub fn set_rotation_period(&self, period: Option<&str>) -> Result<RotationSchedule, KeyError> {
        self.keys().set_rotation_period(period, false)
    }

    /// Runs what is due at `now` (automatic rotation, due destructions), as
    /// a mount's scheduler would.
    pub fn run_schedules(&self, now: u64) -> Result<Vec<String>, KeyError> {
        self.keys().run_schedules(now)
    }

    /// Changes the unlock secret (re-seals the keyring only).
    pub fn change_secret(
        &self,
        secret: &UnlockSecret,
        params: Argon2Params,
    ) -> Result<(), KeyError> {
        self.keys().change_secret(secret, params)
    }
}
