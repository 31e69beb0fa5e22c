//! The FUSE frontend: maps kernel requests onto the [`crate::volume`] layer.
//!
//! Owns: the inode table (one `O_PATH` fd per inode the kernel knows, plus
//! its parent and plaintext name, which form its encryption context), open
//! file handles (one shared [`SealedFile`] per open inode), directory
//! listings, and the mapping of every error to an errno.
//! Must never: implement crypto or format details, or log plaintext names,
//! content or keys (log inode numbers instead).
//!
//! Threading: fuser runs several request loops (`Config::n_threads` with
//! `clone_fd`); each handler does its crypto inline. Content I/O takes the
//! per-file lock (shared for reads, exclusive for writes); namespace changes
//! (rename, unlink, rmdir) take the namespace lock exclusively, lookups and
//! creates take it shared, reads and writes not at all.

pub mod access;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::{Mutex, RwLock};

use crate::format::grants::{Access, GrantOp};
use crate::format::header::EncryptionContext;
use crate::format::layout::plaintext_size;
use crate::format::names::{BackingName, MAX_NAME};
use crate::volume::backing::{self, TimeSpec};
use crate::volume::content::{SealedFile, SCRATCH_MAX};
use crate::volume::grants::{op_for_open, LiveGrant};
use crate::volume::namespace::{self, RenameEnd, RenameOptions};
use crate::volume::reclaim::ReclaimQueue;
use crate::volume::{Directory, EntryKind, Volume, VolumeError};
use access::{Caller, Event, Policy};

/// How long the kernel may cache attributes and entries. sealfs is the only
/// writer of its cipher directory while mounted, so caching is safe; one
/// second bounds staleness if someone edits the cipher dir underneath.
const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;

type FsResult<T> = Result<T, Errno>;

fn errno_of(e: &VolumeError) -> Errno {
    if e.is_integrity() {
        crate::metrics::integrity_failure();
    }
    Errno::from_i32(e.errno())
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFREG => FileType::RegularFile,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

struct Location {
    parent: Option<Arc<Inode>>,
    /// Plaintext name (with the parent's id, the encryption context).
    name: Vec<u8>,
    /// Backing entry name in the parent's backing directory.
    entry: String,
    /// The name was removed (unlink, or replaced by a rename) while the
    /// kernel still knows the node: `entry` may name another object by now,
    /// so the node is reached only through its open backing fd, if any.
    unlinked: bool,
}

struct OpenState {
    count: usize,
    file: Option<Arc<RwLock<SealedFile>>>,
}

/// One object the kernel knows. Directories hold an `O_PATH` fd (the anchor
/// of every `*at` call below them); other objects hold none and are reached
/// as (parent's fd, backing entry), so the daemon's open files grow with the
/// number of cached directories, not files.
struct Inode {
    /// FUSE node id (the backing inode number unless that is taken).
    ino: u64,
    backing_ino: u64,
    kind: EntryKind,
    dir_fd: Option<OwnedFd>,
    nlookup: AtomicU64,
    loc: Mutex<Location>,
    dir: RwLock<Option<Arc<Directory>>>,
    /// A directory whose record is written but not yet synced (see [`RecordFlusher`]).
    record_pending: AtomicBool,
    open: Mutex<OpenState>,
    /// Of a directory: bumped after every change of its entries made
    /// through this mount (see [`SealFs::dir_changed`]).
    changes: AtomicU64,
    /// Of a directory: its decrypted listing while unchanged.
    listing: Mutex<Option<CachedListing>>,
}

/// Directories with more entries than this are listed afresh on every
/// opendir instead of being kept (bounds the daemon's memory).
const LISTING_CACHE_MAX: usize = 16_384;

/// What a cached listing is valid for: no change through the mount since,
/// the same parent (for `..`), and the same backing directory times, size
/// and link count (a change made underneath the mount; on kernels with
/// fine-grained timestamps, 6.13 and later, every such change shows).
#[derive(Clone, Copy, PartialEq, Eq)]
struct ListingStamp {
    changes: u64,
    parent: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    size: i64,
    nlink: u64,
}

/// A directory's decrypted listing (names decrypted once per directory
/// version, not once per opendir).
struct CachedListing {
    stamp: ListingStamp,
    entries: Arc<Vec<Listed>>,
}

impl Inode {
    fn dir_fd(&self) -> FsResult<std::os::fd::BorrowedFd<'_>> {
        self.dir_fd
            .as_ref()
            .map(|f| f.as_fd())
            .ok_or(Errno::ENOTDIR)
    }
}

/// Directory records of new directories are written without a sync (an
/// fdatasync per mkdir cost more than the rest of `tar x`). They are made
/// durable before any fsync below them, by a flusher every
/// [`RECORD_FLUSH_INTERVAL`], and at unmount, so a record is never less
/// durable than a child someone asked to be durable.
struct RecordFlusher {
    vol: Arc<Volume>,
    pending: Mutex<Vec<Arc<Inode>>>,
}

const RECORD_FLUSH_INTERVAL: Duration = Duration::from_secs(2);

impl RecordFlusher {
    fn persist(&self, inode: &Inode) -> FsResult<()> {
        if inode.record_pending.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.vol.persist_dir_record(match inode.dir_fd() {
                Ok(fd) => fd,
                Err(_) => return Ok(()),
            }) {
                if matches!(&e, VolumeError::Io(io) if io.kind() == std::io::ErrorKind::NotFound) {
                    return Ok(()); // removed meanwhile
                }
                inode.record_pending.store(true, Ordering::Release);
                tracing::warn!(ino = inode.ino, "cannot sync directory record: {e}");
                return Err(errno_of(&e));
            }
        }
        Ok(())
    }

    fn flush_all(&self) {
        let pending = std::mem::take(&mut *self.pending.lock());
        for i in pending {
            if self.persist(&i).is_err() {
                self.pending.lock().push(i);
            }
        }
    }

    fn spawn(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("sealfs-records".into())
            .spawn(move || loop {
                std::thread::sleep(RECORD_FLUSH_INTERVAL);
                match weak.upgrade() {
                    Some(f) => f.flush_all(),
                    None => return,
                }
            });
    }
}

/// Why a file's content could not be opened.
struct OpenFailure {
    errno: Errno,
    /// The integrity failure (tampered or moved ciphertext), if that was it.
    integrity: Option<String>,
}

impl From<Errno> for OpenFailure {
    fn from(errno: Errno) -> Self {
        OpenFailure {
            errno,
            integrity: None,
        }
    }
}

/// A file made (or opened) by create: its inode, backing stat, shared
/// content, and the grant that allowed it (None: the owner).
type CreatedFile = (
    Arc<Inode>,
    libc::stat,
    Arc<RwLock<SealedFile>>,
    Option<Arc<LiveGrant>>,
);

/// One entry of a directory listing taken at opendir.
struct Listed {
    ino: u64,
    kind: FileType,
    name: OsString,
    /// The backing entry name; `None` for `.` and `..`.
    entry: Option<String>,
}

/// The node table: node id → inode, and backing inode → node id for the
/// objects still reachable by name. A backing inode freed by an unlink
/// through this mount leaves `by_backing` at once, so a recycled backing
/// number gets a fresh node id while the kernel may still hold the old one.
#[derive(Default)]
struct Table {
    nodes: HashMap<u64, Arc<Inode>>,
    by_backing: HashMap<u64, u64>,
}

enum Handle {
    /// An open file, and the grant it was opened through (None: the owner).
    File(Arc<Inode>, Arc<RwLock<SealedFile>>, Option<Arc<LiveGrant>>),
    Dir(Arc<Inode>, Arc<Vec<Listed>>),
}

/// A handle on the kernel's caches of this mount, for the control plane:
/// disabling the key (or revoking access) must also stop the kernel from
/// serving pages it already holds.
#[derive(Clone)]
pub struct CacheControl {
    inodes: Arc<RwLock<Table>>,
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

impl CacheControl {
    /// Gives the handle the session's notifier (once the session exists).
    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    /// Writes back and drops the kernel's cached data of every known file,
    /// so the next read reaches the daemon.
    pub fn invalidate_file_data(&self) {
        let Some(n) = self.notifier.get() else { return };
        let files: Vec<u64> = self
            .inodes
            .read()
            .nodes
            .values()
            .filter(|i| i.kind == EntryKind::File)
            .map(|i| i.ino)
            .collect();
        for ino in files {
            if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::warn!(ino, "cache invalidation failed: {e}");
                }
            }
        }
    }
}

/// Mount-time choices that shape the frontend.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users through (the kernel checks modes: `default_permissions`).
    pub allow_other: bool,
    /// Refuse every change.
    pub read_only: bool,
    /// Request loops.
    pub threads: usize,
}

/// When the mount was last used and how many files and directories are
/// open through it, for unmounting an unused mount (`sealfs mount --idle`).
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last request.
    last_ms: AtomicU64,
    /// Open file and directory handles.
    open: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            open: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether nothing is open and no request came for at least `d`.
    /// Requests that do not mean use (the kernel's `forget`, `statfs` as
    /// `df` sends it) do not count.
    pub fn idle_for(&self, d: Duration) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        self.open.load(Ordering::Relaxed) == 0 && now.saturating_sub(last) >= d.as_millis() as u64
    }
}

/// The fuser filesystem over one volume.
pub struct SealFs {
    vol: Arc<Volume>,
    inodes: Arc<RwLock<Table>>,
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    next_node: AtomicU64,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    daemon_is_root: bool,
    records: Arc<RecordFlusher>,
    activity: Arc<Activity>,
    /// Unlinked backing files, freed off the request path.
    reclaim: ReclaimQueue,
    /// Who may use which keys, and the audit trail.
    policy: Arc<Policy>,
}

impl SealFs {
    /// Prepares the frontend: opens the root and checks its directory record.
    pub fn new(vol: Arc<Volume>, policy: Arc<Policy>) -> Result<Self, VolumeError> {
        let root_fd = vol.root_fd()?;
        let st = backing::stat(root_fd.as_fd(), OsStr::new(""))?;
        let root_dir = vol.load_dir(root_fd.as_fd(), &EncryptionContext::ROOT)?;
        let root = Arc::new(Inode {
            ino: ROOT,
            backing_ino: st.st_ino,
            kind: EntryKind::Dir,
            dir_fd: Some(root_fd),
            nlookup: AtomicU64::new(1),
            loc: Mutex::new(Location {
                parent: None,
                name: Vec::new(),
                entry: String::new(),
                unlinked: false,
            }),
            dir: RwLock::new(Some(Arc::new(root_dir))),
            record_pending: AtomicBool::new(false),
            open: Mutex::new(OpenState {
                count: 0,
                file: None,
            }),
            changes: AtomicU64::new(0),
            listing: Mutex::new(None),
        });
        let mut table = Table::default();
        table.nodes.insert(ROOT, root);
        table.by_backing.insert(st.st_ino, ROOT);
        let records = Arc::new(RecordFlusher {
            vol: vol.clone(),
            pending: Mutex::new(Vec::new()),
        });
        Ok(SealFs {
            records,
            vol,
            inodes: Arc::new(RwLock::new(table)),
            next_node: AtomicU64::new(1 << 62),
            notifier: Arc::new(std::sync::OnceLock::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            daemon_is_root: unsafe { libc::geteuid() } == 0,
            activity: Arc::new(Activity::new()),
            reclaim: ReclaimQueue::new(),
            policy,
        })
    }

    /// The plaintext path of `inode`: its encryption context as a path,
    /// canonical (no `..`, no symlinks: the kernel resolves those through
    /// lookups, each checked on its own).
    fn path_of(inode: &Inode) -> Vec<u8> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut cur = {
            let l = inode.loc.lock();
            if l.parent.is_some() {
                names.push(l.name.clone());
            }
            l.parent.clone()
        };
        while let Some(p) = cur {
            let l = p.loc.lock();
            if l.parent.is_some() {
                names.push(l.name.clone());
            }
            cur = l.parent.clone();
        }
        if names.is_empty() {
            return b"/".to_vec();
        }
        let mut out = Vec::new();
        for n in names.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(n);
        }
        out
    }

    /// The path of `name` in directory `parent`.
    fn child_path(parent: &Inode, name: &[u8]) -> Vec<u8> {
        let mut p = Self::path_of(parent);
        if p != b"/" {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    /// [`Policy::authorize`] for the entry `name` in directory `parent`.
    fn authorize_child(
        &self,
        req: &Request,
        parent: &Inode,
        name: &OsStr,
        access: Access,
        op: &str,
    ) -> FsResult<Option<Arc<LiveGrant>>> {
        self.policy.authorize(
            Caller::of(req),
            || Self::child_path(parent, name.as_bytes()),
            access,
            op,
        )
    }

    /// Whether paths are needed for the audit log.
    fn audit_paths(&self) -> bool {
        self.policy.audited()
    }

    /// Use of the mount, shared with whoever watches for idleness.
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// The cache handle for the control plane.
    pub fn cache_control(&self) -> CacheControl {
        CacheControl {
            inodes: self.inodes.clone(),
            notifier: self.notifier.clone(),
        }
    }

    /// EACCES while the key is disabled: no key use at all.
    fn check_enabled(&self) -> FsResult<()> {
        if self.vol.is_disabled() {
            crate::metrics::denied(crate::metrics::Denial::KeyDisabled);
            Err(Errno::EACCES)
        } else {
            Ok(())
        }
    }

    /// The node id a directory listing reports for a backing inode.
    fn listed_ino(&self, backing: u64) -> u64 {
        self.inodes
            .read()
            .by_backing
            .get(&backing)
            .copied()
            .unwrap_or(backing)
    }

    /// Runs `f` on the backing object of `inode`: a directory's own fd with
    /// an empty name, or the parent's fd and the entry name (under the
    /// namespace lock, so a concurrent rename cannot move it in between).
    fn with_backing<T>(
        &self,
        inode: &Inode,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>, &OsStr) -> std::io::Result<T>,
    ) -> FsResult<T> {
        if let Some(fd) = &inode.dir_fd {
            return f(fd.as_fd(), OsStr::new("")).map_err(io_errno);
        }
        let _ns = self.vol.namespace().read_recursive();
        let (parent, entry, unlinked) = {
            let l = inode.loc.lock();
            (l.parent.clone(), l.entry.clone(), l.unlinked)
        };
        if unlinked {
            // An open file lives on through its fd (fstat, fchmod and
            // futimens on an open, unlinked file must work); anything else
            // is gone, and its old entry name may be another file's now.
            let file = inode.open.lock().file.clone().ok_or(Errno::ENOENT)?;
            let file = file.read();
            return f(file.backing().as_fd(), OsStr::new("")).map_err(io_errno);
        }
        let parent = parent.ok_or(Errno::EIO)?;
        f(parent.dir_fd()?, OsStr::new(&entry)).map_err(io_errno)
    }

    /// Hands the fd of a backing object whose name was just removed to the
    /// reclaim queue when it was the last name of a regular file (freeing
    /// its blocks is the slow part); anything else is closed at once.
    fn reclaim_unlinked(&self, fd: OwnedFd, st: &libc::stat) {
        if EntryKind::of_mode(st.st_mode) == EntryKind::File && st.st_nlink <= 1 {
            self.reclaim
                .reclaim(fd, (st.st_blocks as u64).saturating_mul(512));
        }
    }

    /// Forgets the name → node link of a backing inode that an unlink or a
    /// replacing rename just freed.
    fn drop_backing(&self, backing: u64) {
        let node = {
            let mut t = self.inodes.write();
            t.by_backing
                .remove(&backing)
                .and_then(|id| t.nodes.get(&id).cloned())
        };
        if let Some(n) = node {
            n.loc.lock().unlinked = true;
        }
    }

    fn inode(&self, ino: INodeNo) -> FsResult<Arc<Inode>> {
        self.inodes
            .read()
            .nodes
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    /// The unlocked directory of a directory inode (loaded once, then cached).
    fn dir_of(&self, inode: &Arc<Inode>) -> FsResult<Arc<Directory>> {
        self.check_enabled()?;
        if inode.kind != EntryKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if let Some(d) = inode.dir.read().as_ref() {
            return Ok(d.clone());
        }
        let (parent, name) = {
            let l = inode.loc.lock();
            (l.parent.clone(), l.name.clone())
        };
        let parent = parent.ok_or(Errno::EIO)?;
        let pdir = self.dir_of(&parent)?;
        let ctx = EncryptionContext {
            parent_dir_id: pdir.id,
            name: &name,
        };
        let d = self.vol.load_dir(inode.dir_fd()?, &ctx).map_err(|e| {
            tracing::warn!(ino = inode.ino, "cannot open directory: {e}");
            errno_of(&e)
        })?;
        let d = Arc::new(d);
        *inode.dir.write() = Some(d.clone());
        Ok(d)
    }

    fn parent_and_name(&self, inode: &Inode) -> FsResult<(Arc<Directory>, Vec<u8>)> {
        let (parent, name) = {
            let l = inode.loc.lock();
            if l.unlinked {
                return Err(Errno::ENOENT);
            }
            (l.parent.clone(), l.name.clone())
        };
        let parent = parent.ok_or(Errno::EIO)?;
        Ok((self.dir_of(&parent)?, name))
    }

    fn backing_name(dir: &Directory, name: &OsStr) -> FsResult<BackingName> {
        if name.len() > MAX_NAME {
            return Err(Errno::ENAMETOOLONG);
        }
        dir.names
            .encrypt_name(name.as_bytes())
            .map_err(|e| errno_of(&e.into()))
    }

    /// Finds or adds the inode for `entry` in `parent`, counting one lookup.
    fn remember(
        &self,
        parent: &Arc<Inode>,
        name: &[u8],
        entry: &str,
    ) -> FsResult<(Arc<Inode>, libc::stat)> {
        let pfd = parent.dir_fd()?;
        let st = backing::stat(pfd, OsStr::new(entry)).map_err(io_errno)?;
        let kind = EntryKind::of_mode(st.st_mode);
        let reuse = |t: &Table| -> Option<Arc<Inode>> {
            let id = t.by_backing.get(&st.st_ino)?;
            let n = t.nodes.get(id)?;
            (n.kind == kind).then(|| n.clone())
        };
        let relink = |n: &Arc<Inode>| {
            n.nlookup.fetch_add(1, Ordering::Relaxed);
            let mut l = n.loc.lock();
            if l.entry != entry || l.parent.as_ref().map(|p| p.ino) != Some(parent.ino) {
                *l = Location {
                    parent: Some(parent.clone()),
                    name: name.to_vec(),
                    entry: entry.to_string(),
                    unlinked: false,
                };
            }
        };
        if let Some(n) = reuse(&self.inodes.read()) {
            relink(&n);
            return Ok((n, st));
        }
        let dir_fd = if kind == EntryKind::Dir {
            let fd = backing::open_dir(pfd, OsStr::new(entry)).map_err(io_errno)?;
            if backing::stat(fd.as_fd(), OsStr::new(""))
                .map_err(io_errno)?
                .st_ino
                != st.st_ino
            {
                return Err(Errno::EAGAIN); // replaced under us (outside this mount)
            }
            Some(fd)
        } else {
            None
        };
        let mut table = self.inodes.write();
        if let Some(n) = reuse(&table) {
            drop(table);
            relink(&n);
            return Ok((n, st));
        }
        let ino = if st.st_ino != ROOT && !table.nodes.contains_key(&st.st_ino) {
            st.st_ino
        } else {
            self.next_node.fetch_add(1, Ordering::Relaxed)
        };
        let inode = Arc::new(Inode {
            ino,
            backing_ino: st.st_ino,
            kind,
            dir_fd,
            nlookup: AtomicU64::new(1),
            loc: Mutex::new(Location {
                parent: Some(parent.clone()),
                name: name.to_vec(),
                entry: entry.to_string(),
                unlinked: false,
            }),
            dir: RwLock::new(None),
            record_pending: AtomicBool::new(false),
            open: Mutex::new(OpenState {
                count: 0,
                file: None,
            }),
            changes: AtomicU64::new(0),
            listing: Mutex::new(None),
        });
        table.nodes.insert(ino, inode.clone());
        table.by_backing.insert(st.st_ino, ino);
        Ok((inode, st))
    }

    /// The unlocked root directory, whose key also seals symlink targets.
    fn root_dir(&self) -> FsResult<Arc<Directory>> {
        let root = self
            .inodes
            .read()
            .nodes
            .get(&ROOT)
            .cloned()
            .ok_or(Errno::EIO)?;
        self.dir_of(&root)
    }

    fn symlink_target(&self, inode: &Inode) -> FsResult<Vec<u8>> {
        let stored = self.with_backing(inode, backing::read_link)?;
        self.root_dir()?
            .names
            .open_symlink_target(&stored)
            .map_err(|e| {
                tracing::warn!(ino = inode.ino, "symlink target failed authentication: {e}");
                Errno::EIO
            })
    }

    fn attr(&self, inode: &Inode, st: &libc::stat) -> FileAttr {
        let ts = |s: i64, n: i64| {
            if s >= 0 {
                UNIX_EPOCH + Duration::new(s as u64, n as u32)
            } else {
                UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(n as u64)
            }
        };
        let size = match inode.kind {
            EntryKind::File => match inode.open.lock().file.as_ref() {
                Some(f) => f.read().size(),
                None => plaintext_size(st.st_size as u64).unwrap_or(0),
            },
            EntryKind::Symlink => self
                .symlink_target(inode)
                .map(|t| t.len() as u64)
                .unwrap_or(0),
            _ => st.st_size as u64,
        };
        FileAttr {
            ino: INodeNo(inode.ino),
            size,
            // What the ciphertext occupies on disk (sparse files stay small).
            blocks: st.st_blocks as u64,
            atime: ts(st.st_atime, st.st_atime_nsec),
            mtime: ts(st.st_mtime, st.st_mtime_nsec),
            ctime: ts(st.st_ctime, st.st_ctime_nsec),
            crtime: ts(st.st_ctime, st.st_ctime_nsec),
            kind: file_type(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            // 0 for an open file whose name is gone; hard links are refused.
            nlink: if inode.kind == EntryKind::Dir {
                st.st_nlink as u32
            } else {
                (st.st_nlink as u32).min(1)
            },
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    fn stat_inode(&self, inode: &Inode) -> FsResult<FileAttr> {
        let st = self.with_backing(inode, backing::stat)?;
        Ok(self.attr(inode, &st))
    }

    /// Opens (or shares) the content of a file inode.
    fn open_content(&self, inode: &Arc<Inode>) -> FsResult<Arc<RwLock<SealedFile>>> {
        self.open_content_why(inode).map_err(|f| f.errno)
    }

    /// Like [`SealFs::open_content`], saying whether a failure was an
    /// integrity failure (for the audit log).
    fn open_content_why(&self, inode: &Arc<Inode>) -> Result<Arc<RwLock<SealedFile>>, OpenFailure> {
        self.check_enabled()?;
        // The header is opened with the inode's current (parent, name): a
        // rename must not change it in between (the rename drops the old
        // binding before it updates the location). Taken before the open
        // lock, in the same order as create_file.
        let _ns = self.vol.namespace().read_recursive();
        let mut st = inode.open.lock();
        if let Some(f) = st.file.clone() {
            st.count += 1;
            return Ok(f);
        }
        let (pdir, name) = self.parent_and_name(inode)?;
        let writable = !self.vol.read_only();
        let file = self.with_backing(inode, |dir, name| backing::open_file(dir, name, writable))?;
        let ctx = EncryptionContext {
            parent_dir_id: pdir.id,
            name: &name,
        };
        let sealed = self.vol.open_file(file, &ctx).map_err(|e| {
            tracing::warn!(ino = inode.ino, "cannot open file: {e}");
            OpenFailure {
                errno: errno_of(&e),
                integrity: e.is_integrity().then(|| e.to_string()),
            }
        })?;
        let f = Arc::new(RwLock::new(sealed));
        st.count = 1;
        st.file = Some(f.clone());
        Ok(f)
    }

    fn close_content(inode: &Inode) {
        let mut st = inode.open.lock();
        st.count = st.count.saturating_sub(1);
        if st.count == 0 {
            st.file = None;
        }
    }

    /// Makes the records of `inode` (if a directory) and of all its ancestors
    /// durable: called before an fsync below them.
    fn persist_records(&self, inode: &Arc<Inode>) -> FsResult<()> {
        let mut cur = Some(inode.clone());
        while let Some(i) = cur {
            self.records.persist(&i)?;
            cur = i.loc.lock().parent.clone();
        }
        Ok(())
    }

    /// Drops `n` kernel lookups of `ino`; the inode leaves the table at zero.
    fn unref(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut table = self.inodes.write();
        let Some(i) = table.nodes.get(&ino) else {
            return;
        };
        let left = i.nlookup.load(Ordering::Relaxed).saturating_sub(n);
        i.nlookup.store(left, Ordering::Relaxed);
        if left == 0 {
            let backing = i.backing_ino;
            table.nodes.remove(&ino);
            if table.by_backing.get(&backing) == Some(&ino) {
                table.by_backing.remove(&backing);
            }
        }
    }

    fn new_handle(&self, h: Handle) -> u64 {
        crate::metrics::handle_opened(matches!(h, Handle::File(..)));
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut handles = self.handles.lock();
        handles.insert(fh, Arc::new(h));
        self.activity
            .open
            .store(handles.len() as u64, Ordering::Relaxed);
        fh
    }

    fn remove_handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        let mut handles = self.handles.lock();
        let h = handles.remove(&fh.0);
        if let Some(h) = &h {
            crate::metrics::handle_closed(matches!(**h, Handle::File(..)));
        }
        self.activity
            .open
            .store(handles.len() as u64, Ordering::Relaxed);
        h
    }

    fn file_handle(&self, fh: FileHandle) -> FsResult<Arc<Handle>> {
        self.handles.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The content of an open file handle, if the grant it was opened
    /// through (if any) still stands.
    fn content_of(&self, req: &Request, fh: FileHandle) -> FsResult<Arc<RwLock<SealedFile>>> {
        self.check_enabled()?;
        match &*self.file_handle(fh)? {
            Handle::File(inode, f, grant) => {
                if let Some(g) = grant {
                    self.policy
                        .check_handle(Caller::of(req), g, "use_handle", || Self::path_of(inode))?;
                }
                Ok(f.clone())
            }
            Handle::Dir(..) => Err(Errno::EISDIR),
        }
    }

    /// Records an integrity failure seen on an open file.
    fn record_integrity(&self, req: &Request, fh: FileHandle, e: &VolumeError) {
        if !self.audit_paths() {
            return;
        }
        let path = match self.file_handle(fh).as_deref() {
            Ok(Handle::File(inode, ..)) => Some(Self::path_of(inode)),
            _ => None,
        };
        let _ = self.policy.record(
            Caller::of(req),
            Event {
                outcome: "error",
                error: Some(e.to_string()),
                ..Event::ok("integrity_failure", path.as_deref())
            },
        );
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.vol.read_only() {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Gives a new entry to the requesting user (when the daemon runs as
    /// root for other users with allow_other).
    ///
    /// In a set-group-ID parent the entry keeps the group the backing
    /// filesystem gave it (the parent's), as on ext4.
    fn chown_new(&self, parent: &Inode, entry: &str, req: &Request) {
        if self.daemon_is_root && (req.uid() != 0 || req.gid() != 0) {
            let r = parent
                .dir_fd()
                .map_err(|_| std::io::Error::from_raw_os_error(libc::ENOTDIR))
                .and_then(|fd| {
                    namespace::give_new_entry(fd, OsStr::new(entry), req.uid(), req.gid())
                });
            if let Err(e) = r {
                tracing::warn!("chown of new entry failed: {e}");
            }
        }
    }

    /// Gives a new entry exactly the permission bits the caller asked for
    /// (see [`namespace::set_new_mode`]). Call after [`Self::chown_new`],
    /// since a chown clears set-ID bits.
    fn set_new_mode(dir: std::os::fd::BorrowedFd<'_>, entry: &OsStr, mode: u32) -> FsResult<()> {
        namespace::set_new_mode(dir, entry, mode).map_err(io_errno)
    }

    /// Creates a keyless node (FIFO, socket, device, symlink) with `make`
    /// under its encrypted name and returns its attributes.
    fn create_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: Option<u32>,
        make: impl FnOnce(std::os::fd::BorrowedFd<'_>, &BackingName) -> std::io::Result<()>,
    ) -> FsResult<FileAttr> {
        self.check_writable()?;
        let _ns = self.vol.namespace().read();
        let p = self.inode(parent)?;
        self.authorize_child(req, &p, name, Access::Op(GrantOp::Create), "create")?;
        let d = self.dir_of(&p)?;
        let bn = Self::backing_name(&d, name)?;
        make(p.dir_fd()?, &bn).map_err(io_errno)?;
        self.chown_new(&p, &bn.entry, req);
        if let Some(m) = mode {
            Self::set_new_mode(p.dir_fd()?, OsStr::new(&bn.entry), m)?;
        }
        let (inode, st) = self.remember(&p, name.as_bytes(), &bn.entry)?;
        Ok(self.attr(&inode, &st))
    }

    fn create_file(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> FsResult<CreatedFile> {
        self.check_writable()?;
        let caller = Caller::of(req);
        let _ns = self.vol.namespace().read();
        let pinode = self.inode(parent)?;
        let grant = self.authorize_child(
            req,
            &pinode,
            name,
            Access::Op(GrantOp::Create),
            "generate_data_key",
        )?;
        let pdir = self.dir_of(&pinode)?;
        let bn = Self::backing_name(&pdir, name)?;
        let pfd = pinode.dir_fd()?;
        // Removed again (with its sidecar) unless kept at the end.
        let mut new = match namespace::create_file(pfd, &bn, mode & 0o7777) {
            Ok(new) => new,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                drop(_ns);
                let (inode, st) = self.remember(&pinode, name.as_bytes(), &bn.entry)?;
                let grant = self.policy.authorize(
                    caller,
                    || Self::path_of(&inode),
                    Access::Op(op_for_open(flags)),
                    "encrypt",
                )?;
                let f = self.open_content(&inode)?;
                let version = f.read().key_version();
                if let Err(e) =
                    self.record_open(caller, &inode, "encrypt", version, grant.as_deref())
                {
                    Self::close_content(&inode);
                    return Err(e);
                }
                return Ok((inode, st, f, grant));
            }
            Err(e) => return Err(io_errno(e)),
        };
        self.chown_new(&pinode, &bn.entry, req);
        Self::set_new_mode(pfd, new.entry(), mode)?;
        let ctx = EncryptionContext {
            parent_dir_id: pdir.id,
            name: name.as_bytes(),
        };
        let sealed = new.seal_file(&self.vol, &ctx).map_err(|e| errno_of(&e))?;
        if self.audit_paths() {
            let path = Self::child_path(&pinode, name.as_bytes());
            // Fail-closed: no record, no new file.
            self.policy.record(
                caller,
                Event {
                    key_version: Some(sealed.key_version()),
                    grant: grant.as_ref().map(|g| g.id.as_str()),
                    ..Event::ok("generate_data_key", Some(&path))
                },
            )?;
        }
        new.keep();
        let (inode, st) = self.remember(&pinode, name.as_bytes(), &bn.entry)?;
        let f = Arc::new(RwLock::new(sealed));
        {
            let mut os = inode.open.lock();
            match os.file.clone() {
                Some(existing) => {
                    os.count += 1;
                    return Ok((inode.clone(), st, existing, grant));
                }
                None => {
                    os.count = 1;
                    os.file = Some(f.clone());
                }
            }
        }
        Ok((inode, st, f, grant))
    }

    /// Records the opening of a file's data key (fail-closed: Err refuses the open).
    fn record_open(
        &self,
        caller: Caller,
        inode: &Inode,
        op: &str,
        key_version: u32,
        grant: Option<&LiveGrant>,
    ) -> FsResult<()> {
        if !self.audit_paths() {
            return Ok(());
        }
        let path = Self::path_of(inode);
        self.policy.record(
            caller,
            Event {
                key_version: (key_version != 0).then_some(key_version),
                grant: grant.map(|g| g.id.as_str()),
                ..Event::ok(op, Some(&path))
            },
        )
    }

    /// Marks the entries of directory `ino` changed (after the change, so
    /// that a listing taken meanwhile is not kept: its stamp is older).
    fn dir_changed(&self, ino: INodeNo) {
        if let Ok(i) = self.inode(ino) {
            i.changes.fetch_add(1, Ordering::AcqRel);
            *i.listing.lock() = None;
        }
    }

    /// The entries of a directory, `.` and `..` first: the cached listing
    /// when the directory is unchanged, else freshly read and decrypted.
    fn list_dir(&self, inode: &Arc<Inode>) -> FsResult<Arc<Vec<Listed>>> {
        let dir = self.dir_of(inode)?;
        // Read before the listing: a change that lands while it is read
        // bumps the counter past this stamp.
        let changes = inode.changes.load(Ordering::Acquire);
        let parent_ino = inode
            .loc
            .lock()
            .parent
            .as_ref()
            .map(|p| p.ino)
            .unwrap_or(ROOT);
        let st = backing::stat(inode.dir_fd()?, OsStr::new("")).map_err(io_errno)?;
        let stamp = ListingStamp {
            changes,
            parent: parent_ino,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            size: st.st_size,
            nlink: st.st_nlink,
        };
        if let Some(c) = inode.listing.lock().as_ref() {
            if c.stamp == stamp {
                return Ok(c.entries.clone());
            }
        }
        let mut out = vec![
            Listed {
                ino: inode.ino,
                kind: FileType::Directory,
                name: ".".into(),
                entry: None,
            },
            Listed {
                ino: parent_ino,
                kind: FileType::Directory,
                name: "..".into(),
                entry: None,
            },
        ];
        let entries = self
            .vol
            .list_dir(inode.dir_fd()?, &dir)
            .map_err(|e| errno_of(&e))?;
        for e in entries {
            use std::os::unix::fs::FileTypeExt;
            let kind = match e.file_type {
                Some(t) if t.is_dir() => FileType::Directory,
                Some(t) if t.is_symlink() => FileType::Symlink,
                Some(t) if t.is_fifo() => FileType::NamedPipe,
                Some(t) if t.is_socket() => FileType::Socket,
                Some(t) if t.is_char_device() => FileType::CharDevice,
                Some(t) if t.is_block_device() => FileType::BlockDevice,
                _ => FileType::RegularFile,
            };
            out.push(Listed {
                ino: self.listed_ino(e.backing_ino),
                kind,
                name: OsString::from_vec(e.name),
                entry: Some(e.entry),
            });
        }
        let out = Arc::new(out);
        *inode.listing.lock() = (out.len() <= LISTING_CACHE_MAX).then(|| CachedListing {
            stamp,
            entries: out.clone(),
        });
        Ok(out)
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.check_writable()?;
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let _ns = self.vol.namespace().write();
        let p = self.inode(parent)?;
        let np = self.inode(newparent)?;
        let pdir = self.dir_of(&p)?;
        let npdir = self.dir_of(&np)?;
        let src = Self::backing_name(&pdir, name)?;
        let dst = Self::backing_name(&npdir, newname)?;
        let old_ctx = EncryptionContext {
            parent_dir_id: pdir.id,
            name: name.as_bytes(),
        };
        let new_ctx = EncryptionContext {
            parent_dir_id: npdir.id,
            name: newname.as_bytes(),
        };
        let renamed = namespace::rename(
            &self.vol,
            RenameEnd {
                dir: p.dir_fd()?,
                name: &src,
                ctx: &old_ctx,
            },
            RenameEnd {
                dir: np.dir_fd()?,
                name: &dst,
                ctx: &new_ctx,
            },
            RenameOptions {
                same_dir: p.ino == np.ino,
                noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
                durable: false,
            },
        )
        .map_err(|e| errno_of(&e))?;
        let Some(renamed) = renamed else {
            return Ok(()); // onto itself
        };
        let st = renamed.moved;
        if let Some(t) = renamed.replaced {
            // A replaced target's backing inode may be recycled from now on;
            // a replaced file is freed in the background, like an unlink.
            if t.st.st_ino != st.st_ino {
                self.drop_backing(t.st.st_ino);
            }
            if let Some(fd) = t.fd {
                self.reclaim_unlinked(fd, &t.st);
            }
        }
        // Update the moved inode's location (its encryption context).
        let moved_inode = {
            let t = self.inodes.read();
            t.by_backing
                .get(&st.st_ino)
                .and_then(|id| t.nodes.get(id))
                .cloned()
        };
        if let Some(m) = moved_inode {
            *m.loc.lock() = Location {
                parent: Some(np.clone()),
                name: newname.as_bytes().to_vec(),
                entry: dst.entry.clone(),
                unlinked: false,
            };
        }
        Ok(())
    }
}

fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Raises the kernel's readahead for the mount at `mountpoint` to `kb` KiB
/// (default 128 KiB), so a sequential read arrives as 1 MiB requests instead
/// of 128 KiB ones. Reads /proc/self/mountinfo (a stat of the mount point
/// would wait for this very daemon); needs root, else it does nothing.
pub fn raise_readahead(mountpoint: &Path, kb: u32) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let want = mountpoint.to_string_lossy();
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() > 4 && f[4] == want && line.contains(" - fuse") {
            let path = format!("/sys/class/bdi/{}/read_ahead_kb", f[2]);
            if let Err(e) = std::fs::write(&path, format!("{kb}\n")) {
                tracing::debug!("readahead not raised ({path}): {e}");
            }
        }
    }
}

fn time_spec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::Omit,
        Some(TimeOrNow::Now) => TimeSpec::Now,
        Some(TimeOrNow::SpecificTime(st)) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::At(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                TimeSpec::At(-(d.as_secs() as i64), 0)
            }
        },
    }
}

impl fuser::Filesystem for SealFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let want = InitFlags::FUSE_WRITEBACK_CACHE
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO;
        let want = want & config.capabilities();
        if let Err(missing) = config.add_capabilities(want) {
            tracing::info!("kernel lacks capabilities {missing:?}");
        }
        self.records.spawn();
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn destroy(&mut self) {
        self.records.flush_all();
        if let Some(log) = self.policy.audit_log() {
            if let Err(e) = log.sync() {
                tracing::warn!("audit log sync at unmount failed: {e}");
            }
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Lookup);
        let r = (|| {
            let _ns = self.vol.namespace().read();
            let p = self.inode(parent)?;
            self.authorize_child(req, &p, name, Access::Lookup, "lookup")?;
            let d = self.dir_of(&p)?;
            let bn = Self::backing_name(&d, name)?;
            let (inode, st) = self.remember(&p, name.as_bytes(), &bn.entry)?;
            Ok(self.attr(&inode, &st))
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            // A negative entry (node id 0) with a timeout: the kernel caches
            // the miss, saving the second LOOKUP of stat-then-create patterns
            // (cp, tar, rsync). Safe: only this daemon adds names.
            Err(e) if e == Errno::ENOENT => reply.entry(&TTL, &negative_attr(), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.unref(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Getattr);
        let r = self.inode(ino).and_then(|i| {
            self.policy.authorize(
                Caller::of(req),
                || Self::path_of(&i),
                Access::Lookup,
                "getattr",
            )?;
            self.stat_inode(&i)
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Setattr);
        let r = (|| {
            self.check_writable()?;
            let inode = self.inode(ino)?;
            let grant = self.policy.authorize(
                Caller::of(req),
                || Self::path_of(&inode),
                Access::Op(GrantOp::Write),
                "setattr",
            )?;
            if let Some(m) = mode {
                if inode.kind != EntryKind::Symlink {
                    self.with_backing(&inode, |d, n| backing::set_mode(d, n, m & 0o7777))?;
                }
            }
            if uid.is_some() || gid.is_some() {
                self.with_backing(&inode, |d, n| backing::set_owner(d, n, uid, gid))?;
            }
            if let Some(sz) = size {
                if inode.kind != EntryKind::File {
                    return Err(Errno::EISDIR);
                }
                match fh.map(|h| self.content_of(req, h)) {
                    Some(Ok(c)) => c.write().set_len(sz).map_err(|e| errno_of(&e))?,
                    _ => {
                        let c = self.open_content(&inode)?;
                        let version = c.read().key_version();
                        if let Err(e) = self.record_open(
                            Caller::of(req),
                            &inode,
                            "encrypt",
                            version,
                            grant.as_deref(),
                        ) {
                            Self::close_content(&inode);
                            return Err(e);
                        }
                        let r = c.write().set_len(sz).map_err(|e| errno_of(&e));
                        Self::close_content(&inode);
                        r?;
                    }
                }
            }
            if atime.is_some() || mtime.is_some() {
                let (a, m) = (time_spec(atime), time_spec(mtime));
                self.with_backing(&inode, |d, n| backing::set_times(d, n, a, m))?;
            }
            self.stat_inode(&inode)
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Readlink);
        let r = self.inode(ino).and_then(|i| {
            self.policy.authorize(
                Caller::of(req),
                || Self::path_of(&i),
                Access::Op(GrantOp::Read),
                "readlink",
            )?;
            self.symlink_target(&i)
        });
        match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Mknod);
        let r = (|| {
            let mode = mode & !umask;
            if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
                let (inode, st, _, _) =
                    self.create_file(req, parent, name, mode & 0o7777, libc::O_EXCL)?;
                Self::close_content(&inode);
                return Ok(self.attr(&inode, &st));
            }
            self.create_node(req, parent, name, Some(mode), |dir, bn| {
                namespace::create_special(dir, bn, mode, rdev as u64)
            })
        })();
        self.dir_changed(parent);
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Mkdir);
        let r = (|| {
            self.check_writable()?;
            let caller = Caller::of(req);
            let _ns = self.vol.namespace().read();
            let p = self.inode(parent)?;
            let grant = self.authorize_child(
                req,
                &p,
                name,
                Access::Op(GrantOp::Create),
                "generate_data_key",
            )?;
            let d = self.dir_of(&p)?;
            let bn = Self::backing_name(&d, name)?;
            let pfd = p.dir_fd()?;
            // Removed again (records, entry, sidecar) unless kept below.
            let new = namespace::create_dir(pfd, &bn, (mode & !umask & 0o7777) | 0o700)
                .map_err(io_errno)?;
            // If the new entry cannot be looked up, it is left as it is (it
            // may not be this mount's any more).
            let (inode, st) = match self.remember(&p, name.as_bytes(), &bn.entry) {
                Ok(found) => found,
                Err(e) => {
                    new.keep();
                    return Err(e);
                }
            };
            let dfd = match inode.dir_fd() {
                Ok(fd) => fd,
                Err(e) => {
                    new.keep();
                    return Err(e);
                }
            };
            let ctx = EncryptionContext {
                parent_dir_id: d.id,
                name: name.as_bytes(),
            };
            if self.audit_paths() {
                let path = Self::child_path(&p, name.as_bytes());
                // Fail-closed: no record, no new directory.
                self.policy.record(
                    caller,
                    Event {
                        key_version: Some(self.vol.keyring().read().primary()),
                        grant: grant.as_ref().map(|g| g.id.as_str()),
                        detail: Some("directory".into()),
                        ..Event::ok("generate_data_key", Some(&path))
                    },
                )?;
            }
            let dir = new
                .init_dir(&self.vol, dfd, &ctx)
                .map_err(|e| errno_of(&e))?;
            new.keep();
            *inode.dir.write() = Some(Arc::new(dir));
            inode.record_pending.store(true, Ordering::Release);
            self.records.pending.lock().push(inode.clone());
            self.chown_new(&p, &bn.entry, req);
            if let Err(e) = Self::set_new_mode(pfd, OsStr::new(&bn.entry), mode & !umask) {
                tracing::warn!(
                    ino = inode.ino,
                    "cannot set the mode of a new directory: {e:?}"
                );
            }
            let st = backing::stat(dfd, OsStr::new("")).unwrap_or(st);
            Ok(self.attr(&inode, &st))
        })();
        self.dir_changed(parent);
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Unlink);
        let r = (|| {
            self.check_writable()?;
            let _ns = self.vol.namespace().write();
            let p = self.inode(parent)?;
            self.authorize_child(req, &p, name, Access::Op(GrantOp::Delete), "delete")?;
            let d = self.dir_of(&p)?;
            let bn = Self::backing_name(&d, name)?;
            // The removed file stays pinned, so that freeing its blocks
            // happens when the pin is closed, in the background.
            let removed = namespace::unlink(p.dir_fd()?, &bn).map_err(io_errno)?;
            self.drop_backing(removed.st.st_ino);
            self.reclaim_unlinked(removed.fd, &removed.st);
            Ok(())
        })();
        self.dir_changed(parent);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Rmdir);
        let r = (|| {
            self.check_writable()?;
            let _ns = self.vol.namespace().write();
            let p = self.inode(parent)?;
            self.authorize_child(req, &p, name, Access::Op(GrantOp::Delete), "delete")?;
            let d = self.dir_of(&p)?;
            let bn = Self::backing_name(&d, name)?;
            let removed = namespace::rmdir(p.dir_fd()?, &bn).map_err(io_errno)?;
            self.drop_backing(removed.st_ino);
            Ok(())
        })();
        self.dir_changed(parent);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Symlink);
        let r = (|| {
            // Symlink targets are sealed under the root directory's key, not
            // the parent's, so a symlink moves between directories by a
            // plain rename.
            let sealed = self
                .root_dir()?
                .names
                .seal_symlink_target(target.as_os_str().as_bytes())
                .map_err(|_| Errno::ENAMETOOLONG)?;
            self.create_node(req, parent, link_name, None, |dir, bn| {
                namespace::create_symlink(dir, bn, &sealed)
            })
        })();
        self.dir_changed(parent);
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Rename);
        let r = (|| {
            let caller = Caller::of(req);
            let (p, np) = (self.inode(parent)?, self.inode(newparent)?);
            let needs_paths = self.audit_paths() || !self.policy.is_owner(caller.uid);
            let (from, to) = if needs_paths {
                let _ns = self.vol.namespace().read();
                (
                    Self::child_path(&p, name.as_bytes()),
                    Self::child_path(&np, newname.as_bytes()),
                )
            } else {
                (Vec::new(), Vec::new())
            };
            // Both ends must lie in a prefix with the rename operation: no
            // moving data out of (or into) a grant's reach.
            let rename = Access::Op(GrantOp::Rename);
            let grant = self
                .policy
                .authorize(caller, || from.clone(), rename, "re_encrypt")?;
            self.policy
                .authorize(caller, || to.clone(), rename, "re_encrypt")?;
            let event = |outcome, error| Event {
                key_version: Some(self.vol.keyring().read().primary()),
                grant: grant.as_ref().map(|g| g.id.as_str()),
                outcome,
                error,
                detail: Some(format!("from {}", String::from_utf8_lossy(&from))),
                ..Event::ok("re_encrypt", Some(&to))
            };
            // Recorded before (fail-closed); a failure is recorded after.
            self.policy.record(caller, event("ok", None))?;
            let r = self.do_rename(parent, name, newparent, newname, flags);
            if let Err(e) = r {
                if e != Errno::ENOENT && e != Errno::EEXIST && e != Errno::ENOTEMPTY {
                    let _ = self
                        .policy
                        .record(caller, event("error", Some(format!("{e:?}"))));
                }
            }
            r
        })();
        self.dir_changed(parent);
        if newparent != parent {
            self.dir_changed(newparent);
        }
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.activity.touch();
        // Refused by design: a file's key is bound to one (directory, name); see docs/FORMAT.md.
        reply.error(Errno::EPERM);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Open);
        let caller = Caller::of(req);
        let r = (|| {
            let inode = self.inode(ino)?;
            if inode.kind != EntryKind::File {
                return Err(if inode.kind == EntryKind::Dir {
                    Errno::EISDIR
                } else {
                    Errno::EACCES
                });
            }
            if self.vol.read_only() && flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
                return Err(Errno::EROFS);
            }
            let gop = op_for_open(flags.0);
            let op = if gop == GrantOp::Read {
                "decrypt"
            } else {
                "encrypt"
            };
            let grant =
                self.policy
                    .authorize(caller, || Self::path_of(&inode), Access::Op(gop), op)?;
            let f = match self.open_content_why(&inode) {
                Ok(f) => f,
                Err(OpenFailure { errno, integrity }) => {
                    if self.audit_paths() {
                        let path = Self::path_of(&inode);
                        let (op, error) = match integrity {
                            Some(why) => ("integrity_failure", why),
                            None => (op, format!("{errno:?}")),
                        };
                        let _ = self.policy.record(
                            caller,
                            Event {
                                grant: grant.as_ref().map(|g| g.id.as_str()),
                                outcome: if errno == Errno::EACCES {
                                    "denied"
                                } else {
                                    "error"
                                },
                                error: Some(error),
                                ..Event::ok(op, Some(&path))
                            },
                        );
                    }
                    return Err(errno);
                }
            };
            let version = f.read().key_version();
            if let Err(e) = self.record_open(caller, &inode, op, version, grant.as_deref()) {
                Self::close_content(&inode);
                return Err(e);
            }
            // Through a grant, every read and write reaches the daemon (no
            // page cache), so revoking the grant stops an open handle at once.
            let flags = if grant.is_some() {
                FopenFlags::FOPEN_DIRECT_IO
            } else {
                FopenFlags::FOPEN_KEEP_CACHE
            };
            Ok((self.new_handle(Handle::File(inode, f, grant)), flags))
        })();
        match r {
            Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.activity.touch();
        let _timed = crate::metrics::timed_read();
        thread_local! {
            /// Decrypted bytes of this thread's current READ (reused).
            static READ_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let f = match self.content_of(req, fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let size = (size as usize).min(SCRATCH_MAX);
        READ_SCRATCH.with_borrow_mut(|buf| {
            let r = f.read().read_into(offset, size, buf);
            match r {
                Ok(range) => {
                    crate::metrics::read_bytes(range.len());
                    reply.data(&buf[range])
                }
                Err(e) => {
                    if e.is_integrity() {
                        tracing::warn!(fh = fh.0, offset, "integrity failure: {e}");
                        self.record_integrity(req, fh, &e);
                    }
                    reply.error(errno_of(&e))
                }
            }
        })
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.activity.touch();
        let _timed = crate::metrics::timed_write();
        let r = self
            .check_writable()
            .and_then(|_| self.content_of(req, fh))
            .and_then(|f| {
                f.write().write(offset, data).map_err(|e| {
                    if e.is_integrity() {
                        tracing::warn!(fh = fh.0, offset, "integrity failure during write: {e}");
                        self.record_integrity(req, fh, &e);
                    }
                    errno_of(&e)
                })
            });
        match r {
            Ok(()) => {
                crate::metrics::write_bytes(data.len());
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.activity.touch();
        // Nothing is buffered here (writes reach the backing file at once),
        // so FLUSH has nothing to do. ENOSYS makes the kernel stop sending it
        // (one round trip less per close); close() still writes back the
        // page cache first and reports its errors (fuse_flush does that
        // before it looks at no_flush).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Release);
        let h = self.remove_handle(fh);
        if let Some(h) = h {
            if let Handle::File(inode, ..) = &*h {
                Self::close_content(inode);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Fsync);
        let r = self.file_handle(fh).and_then(|h| match &*h {
            Handle::File(inode, ..) => self.persist_records(inode),
            Handle::Dir(..) => Ok(()),
        });
        let r = r.and_then(|_| self.content_of(req, fh)).and_then(|f| {
            let g = f.read();
            let res = if datasync {
                g.backing().sync_data()
            } else {
                g.backing().sync_all()
            };
            res.map_err(io_errno)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Opendir);
        let r = (|| {
            let caller = Caller::of(req);
            let inode = self.inode(ino)?;
            let grant = self.policy.authorize(
                caller,
                || Self::path_of(&inode),
                Access::Op(GrantOp::List),
                "list",
            )?;
            let entries = self.list_dir(&inode)?;
            if self.audit_paths() {
                let path = Self::path_of(&inode);
                self.policy.record(
                    caller,
                    Event {
                        grant: grant.as_ref().map(|g| g.id.as_str()),
                        ..Event::ok("list", Some(&path))
                    },
                )?;
            }
            // No FOPEN_CACHE_DIR: entries served from the kernel's readdir
            // cache come without attributes, so `ls -l` would then cost a
            // LOOKUP per entry instead of one READDIRPLUS; the listing is
            // cached here instead (see list_dir).
            Ok(self.new_handle(Handle::Dir(inode, entries)))
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Readdir);
        let h = match self.file_handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Dir(_, entries) = &*h else {
            return reply.error(Errno::ENOTDIR);
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    /// Like readdir, with attributes, so `ls -l`, `rm -r`, rsync and tar need
    /// no LOOKUP per entry. Every entry but `.`/`..` counts as a lookup.
    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Readdir);
        let h = match self.file_handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Dir(dir, entries) = &*h else {
            return reply.error(Errno::ENOTDIR);
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let (attr, counted) = match &e.entry {
                None => match self.stat_inode(dir) {
                    Ok(mut a) => {
                        a.ino = INodeNo(e.ino);
                        (a, None)
                    }
                    Err(_) => continue,
                },
                Some(entry) => match self.remember(dir, e.name.as_bytes(), entry) {
                    Ok((inode, st)) => (self.attr(&inode, &st), Some(inode.ino)),
                    Err(_) => continue, // removed since opendir
                },
            };
            if reply.add(
                attr.ino,
                (i + 1) as u64,
                &e.name,
                &TTL,
                &attr,
                Generation(0),
            ) {
                if let Some(ino) = counted {
                    self.unref(ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.activity.touch();
        self.remove_handle(fh);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.activity.touch();
        let r = self.inode(ino).and_then(|i| {
            self.persist_records(&i)?;
            backing::sync_dir(i.dir_fd()?).map_err(io_errno)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        crate::metrics::op(crate::metrics::Op::Statfs);
        // Space of just-deleted files counts as free once they are closed.
        self.reclaim.drain();
        let root = self.inodes.read().nodes.get(&ROOT).cloned();
        let r = root
            .ok_or(Errno::EIO)
            .and_then(|r| backing::space(r.dir_fd()?).map_err(io_errno));
        match r {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                MAX_NAME as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Create);
        let r = (|| {
            let (inode, st, f, grant) =
                self.create_file(req, parent, name, mode & !umask & 0o7777, flags)?;
            let a = self.attr(&inode, &st);
            let flags = if grant.is_some() {
                FopenFlags::FOPEN_DIRECT_IO
            } else {
                FopenFlags::FOPEN_KEEP_CACHE
            };
            let fh = self.new_handle(Handle::File(inode, f, grant));
            Ok((a, fh, flags))
        })();
        self.dir_changed(parent);
        match r {
            Ok((a, fh, flags)) => reply.created(&TTL, &a, Generation(0), FileHandle(fh), flags),
            Err(e) => reply.error(e),
        }
    }

    // Extended attributes are not supported in this format version: ENOSYS
    // makes the kernel answer EOPNOTSUPP and stop asking (no per-write
    // security.capability round trip).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        self.activity.touch();
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        self.activity.touch();
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.activity.touch();
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.activity.touch();
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Fallocate);
        let r = (|| {
            self.check_writable()?;
            if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            let f = self.content_of(req, fh)?;
            let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
            let r = f.write().allocate(offset, length, keep_size);
            r.map_err(|e| errno_of(&e))
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// The display name of a mount in /proc/mounts.
pub fn fsname(cipherdir: &Path) -> String {
    format!("sealfs:{}", cipherdir.display())
}

/// Builds the fuser configuration for a mount.
pub fn fuser_config(cipherdir: &Path, opts: &MountOptions) -> fuser::Config {
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        fuser::MountOption::FSName(fsname(cipherdir)),
        fuser::MountOption::Subtype("sealfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if opts.read_only {
        c.mount_options.push(fuser::MountOption::RO);
    }
    c.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    c.n_threads = Some(opts.threads.max(1));
    c.clone_fd = opts.threads > 1;
    c
}
