//! Files of a volume by plaintext path, without mounting: open a cipher
//! directory with its unlock secret, then list, read and write.
//!
//! A thin layer over [`Volume`]: it resolves paths one component at a time
//! (encrypting each name under its parent directory's key, opening each
//! directory record bound to its place) and hands out readers and writers
//! over [`SealedFile`]. The on-disk result is the same as through a mount.
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
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use crate::format::header::EncryptionContext;
use crate::format::keyring::KeyState;
use crate::format::layout::{plaintext_size, CHUNK_SIZE};
use crate::keyring::UnlockSecret;
use crate::volume::content::SealedFile;
use crate::volume::{sys, Directory, Volume, VolumeError};

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
    /// The target exists already.
    #[error("{0}: already exists")]
    AlreadyExists(PathBuf),
    /// The path is empty, or uses `..`.
    #[error("{0}: not a usable path inside the volume (empty, or uses '..')")]
    InvalidPath(PathBuf),
    /// The key is disabled (`sealfs ctl disable`): file access is refused.
    #[error("the volume's key is disabled; enable it with 'sealfs ctl enable' on a mount")]
    Disabled,
}

impl VaultError {
    /// Whether the unlock secret was wrong (or of the wrong kind).
    pub fn is_wrong_secret(&self) -> bool {
        use crate::format::keyring::KeyringFormatError;
        use crate::keyring::KeyringError;
        matches!(
            self,
            VaultError::Volume(VolumeError::Keyring(
                KeyringError::Format(KeyringFormatError::Unlock) | KeyringError::WrongSecretKind(_)
            ))
        )
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

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device node.
    Other,
}

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
    /// Opens `cipherdir` for reading and writing. Takes the volume's
    /// `sealfs.lock`: fails with [`VolumeError::InUse`] while it is mounted.
    pub fn open(cipherdir: &Path, secret: &UnlockSecret) -> Result<Vault, VaultError> {
        Ok(Vault {
            vol: Volume::open(cipherdir, secret, false)?,
        })
    }

    /// Opens `cipherdir` for reading only (no lock; works beside a mount).
    pub fn open_read_only(cipherdir: &Path, secret: &UnlockSecret) -> Result<Vault, VaultError> {
        Ok(Vault {
            vol: Volume::open(cipherdir, secret, true)?,
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
        let fd = sys::openat(
            parent.fd.as_fd(),
            OsStr::new(&bn.entry),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| path_err(e, path))?;
        let ctx = EncryptionContext {
            parent_dir_id: parent.dir.id,
            name: name.as_bytes(),
        };
        let dir = self.vol.load_dir(fd.as_fd(), &ctx)?;
        Ok(OpenDir { fd, dir })
    }

    fn dir_at(&self, comps: &[&OsStr]) -> Result<OpenDir, VaultError> {
        let mut d = self.root()?;
        for (i, c) in comps.iter().enumerate() {
            let so_far: PathBuf = comps[..=i].iter().collect();
            // Errors name the path up to the component that failed.
            d = self.child_dir(&d, c, &so_far)?;
        }
        Ok(d)
    }

    /// The parent directory of `path` and the last component.
    fn parent_of<'p>(&self, path: &'p Path) -> Result<(OpenDir, &'p OsStr), VaultError> {
        let comps = components(path)?;
        let (last, parents) = comps
            .split_last()
            .ok_or_else(|| VaultError::InvalidPath(path.to_path_buf()))?;
        Ok((self.dir_at(parents)?, last))
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
            let kind = match e.file_type {
                Some(t) if t.is_dir() => EntryKind::Dir,
                Some(t) if t.is_file() => EntryKind::File,
                Some(t) if t.is_symlink() => EntryKind::Symlink,
                _ => EntryKind::Other,
            };
            let size = match kind {
                EntryKind::File => sys::fstatat(d.fd.as_fd(), OsStr::new(&e.entry))
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
        let st = sys::fstatat(parent.fd.as_fd(), entry).map_err(|e| path_err(e, path))?;
        if !is_kind(&st, libc::S_IFREG) {
            return Err(VaultError::NotAFile(path.to_path_buf()));
        }
        let fd = sys::openat(
            parent.fd.as_fd(),
            entry,
            libc::O_RDONLY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| path_err(e, path))?;
        let ctx = EncryptionContext {
            parent_dir_id: parent.dir.id,
            name: name.as_bytes(),
        };
        let file = self.vol.open_file(File::from(fd), &ctx)?;
        Ok(FileReader { file, pos: 0 })
    }

    /// The whole content of the regular file at `path`.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, VaultError> {
        let f = self.open_file(path)?;
        Ok(f.file.read(0, f.len() as usize)?)
    }

    /// Creates the regular file at `path` (mode 0666 less the umask), or
    /// truncates it if it exists, and returns a writer. Its parent must exist.
    pub fn create(&self, path: &Path) -> Result<FileWriter, VaultError> {
        self.check_writable()?;
        let (parent, name) = self.parent_of(path)?;
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
        let file = match sys::fstatat(pfd, entry) {
            Ok(st) if is_kind(&st, libc::S_IFREG) => {
                let fd = sys::openat(pfd, entry, libc::O_RDWR | libc::O_NOFOLLOW, 0)
                    .map_err(|e| path_err(e, path))?;
                let mut f = self.vol.open_file(File::from(fd), &ctx)?;
                f.set_len(0)?;
                f
            }
            Ok(_) => return Err(VaultError::NotAFile(path.to_path_buf())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                Volume::write_name_sidecar(pfd, &bn).map_err(VolumeError::from)?;
                let fd = sys::openat(
                    pfd,
                    entry,
                    libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o666,
                )
                .map_err(|e| path_err(e, path))?;
                match self.vol.init_file(File::from(fd), &ctx) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = sys::unlinkat(pfd, entry, false);
                        Volume::remove_name_sidecar(pfd, &bn);
                        return Err(e.into());
                    }
                }
            }
            Err(e) => return Err(path_err(e, path)),
        };
        Ok(FileWriter {
            file,
            parent: parent.fd,
            pos: 0,
            buf: Vec::with_capacity(WRITE_BUFFER),
            failed: false,
        })
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
    pub fn create_dir(&self, path: &Path) -> Result<(), VaultError> {
        self.check_writable()?;
        let (parent, name) = self.parent_of(path)?;
        let _ns = self.vol.namespace().read();
        let bn = parent
            .dir
            .names
            .encrypt_name(name.as_bytes())
            .map_err(VolumeError::from)?;
        let entry = OsStr::new(&bn.entry);
        let pfd = parent.fd.as_fd();
        Volume::write_name_sidecar(pfd, &bn).map_err(VolumeError::from)?;
        sys::mkdirat(pfd, entry, 0o777).map_err(|e| path_err(e, path))?;
        let made = (|| {
            let fd = sys::openat(
                pfd,
                entry,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            let ctx = EncryptionContext {
                parent_dir_id: parent.dir.id,
                name: name.as_bytes(),
            };
            self.vol.init_dir(fd.as_fd(), &ctx)?;
            self.vol.persist_dir_record(fd.as_fd())?;
            sys::fsync_dir(pfd)?;
            Ok::<_, VolumeError>(())
        })();
        if let Err(e) = made {
            if let Ok(fd) = sys::openat(pfd, entry, libc::O_PATH | libc::O_DIRECTORY, 0) {
                for n in [crate::volume::DIR_RECORD_BACKUP, crate::volume::DIR_RECORD] {
                    let _ = sys::unlinkat(fd.as_fd(), OsStr::new(n), false);
                }
            }
            let _ = sys::unlinkat(pfd, entry, true);
            Volume::remove_name_sidecar(pfd, &bn);
            return Err(e.into());
        }
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

/// A file of a [`Vault`] open for reading: [`Read`] and [`Seek`]. A chunk
/// that fails authentication reads as an [`io::ErrorKind::InvalidData`] error.
#[derive(Debug)]
pub struct FileReader {
    file: SealedFile,
    pos: u64,
}

impl FileReader {
    /// Plaintext size.
    pub fn len(&self) -> u64 {
        self.file.size()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn io_of(e: VolumeError) -> io::Error {
    VaultError::Volume(e).into()
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // At most a few chunks per call, so a huge buffer does not mean a huge copy.
        let want = buf.len().min(64 * CHUNK_SIZE as usize);
        let data = self.file.read(self.pos, want).map_err(io_of)?;
        buf[..data.len()].copy_from_slice(&data);
        self.pos += data.len() as u64;
        Ok(data.len())
    }
}

impl Seek for FileReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(n) => {
                self.pos = n;
                return Ok(n);
            }
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = base.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(self.pos)
    }
}

/// Bytes a [`FileWriter`] gathers before sealing them (whole chunks).
const WRITE_BUFFER: usize = 256 * CHUNK_SIZE as usize;

/// A file of a [`Vault`] open for writing from its start: [`Write`],
/// buffered in whole chunks. Call [`FileWriter::finish`] to flush and sync
/// and see the errors; dropping it flushes without syncing and ignores them.
#[derive(Debug)]
pub struct FileWriter {
    file: SealedFile,
    parent: OwnedFd,
    pos: u64,
    buf: Vec<u8>,
    failed: bool,
}

impl FileWriter {
    fn flush_buffer(&mut self) -> Result<(), VolumeError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write(self.pos, &self.buf) {
            self.failed = true;
            return Err(e);
        }
        self.pos += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Flushes, then syncs the file's data and its directory entry.
    pub fn finish(mut self) -> Result<(), VaultError> {
        self.flush_buffer()?;
        self.file.backing().sync_data().map_err(VolumeError::from)?;
        sys::fsync_dir(self.parent_fd()).map_err(VolumeError::from)?;
        Ok(())
    }

    fn parent_fd(&self) -> BorrowedFd<'_> {
        self.parent.as_fd()
    }
}

impl Write for FileWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this file failed"));
        }
        let room = WRITE_BUFFER - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == WRITE_BUFFER {
            self.flush_buffer().map_err(io_of)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buffer().map_err(io_of)
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if !self.failed {
            let _ = self.flush_buffer();
        }
    }
}
