//! The FUSE frontend: maps kernel requests onto the [`crate::volume`] layer.
//!
//! This module is [`SealFs`] and the `fuser::Filesystem` impl, a thin
//! dispatch: each request counts as activity and in the metrics, then goes
//! to its handler in `ops` (`ops::dir` for names, `ops::file` for open
//! files, `ops` itself for attributes and statfs). Around them: `inodes`
//! (the inode table: one node per object the kernel knows, with the parent
//! and plaintext name that form its encryption context), `handles` (open
//! files and directories; one shared [`crate::volume::content::SealedFile`]
//! per open inode), `listing` (the directory listing cache), `attr`
//! (attributes as the kernel sees them), `records` (deferred durability of
//! new directories' records), `session` (the fuser configuration and what
//! the daemon holds on a running mount); access checks and audit records
//! are [`crate::policy`]'s.
//!
//! Owns: the translation of kernel requests into volume calls, and the
//! mapping of every error to an errno.
//! Must never: implement crypto, format details or namespace step orders
//! (`volume::namespace`), make raw system calls (`volume::backing`), or
//! log plaintext names, content or keys (log inode numbers instead).
//!
//! Threading: fuser runs several request loops (`Config::n_threads` with
//! `clone_fd`); each handler does its crypto inline. Content I/O takes the
//! per-file lock (shared for reads, exclusive for writes); namespace changes
//! (rename, unlink, rmdir) take the namespace lock exclusively, lookups and
//! creates take it shared, reads and writes not at all.

mod attr;
mod handles;
mod inodes;
mod links;
mod listing;
mod ops;
mod records;
mod session;
mod space;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileHandle, INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};

use crate::format::config::FEATURE_XATTRS;
use crate::format::header::EncryptionContext;
use crate::policy::AccessControl;
use crate::volume::backing;
use crate::volume::reclaim::ReclaimQueue;
use crate::volume::{Volume, VolumeError};

use handles::Handle;
use inodes::Table;
use records::RecordFlusher;
pub use session::{
    fsname, fuser_config, mount_directly, raise_readahead, Activity, CacheControl, MountOptions,
    FSTYPE, GENERIC_OPTIONS,
};
pub use space::SpaceGuard;

/// How long the kernel may cache attributes and entries on a mount other
/// users can reach (`allow_other`): one second bounds how long a grantee
/// whose grant was revoked still resolves names from the kernel's cache.
/// In shared-storage mode: at most the refresh period ([`SealFs::ttl`]).
const TTL: Duration = Duration::from_secs(1);
/// The same on a private mount (only its owner gets through; not shared
/// storage): sealfs is the only writer of its cipher directory while
/// mounted (the offline tools refuse a mounted volume), and every change
/// it makes goes through the kernel (which updates its caches) or drops
/// them ([`CacheControl`]), so the kernel may keep what it was told for
/// longer: a `find` followed by a `cat` of every file it found, or a
/// `stat` of a tree listed a few seconds ago, asks the daemon nothing
/// again. Ten seconds still bound what someone editing the cipher
/// directory underneath a mount (unsupported) sees.
const PRIVATE_TTL: Duration = Duration::from_secs(10);
/// The root directory's node id (FUSE's).
const ROOT: u64 = 1;

/// What a handler returns: a value, or the errno to answer with.
type FsResult<T> = Result<T, Errno>;

/// The errno for a volume error (an integrity failure is counted).
fn errno_of(e: &VolumeError) -> Errno {
    if e.is_integrity() {
        crate::metrics::integrity_failure();
    }
    Errno::from_i32(e.errno())
}

/// The errno for a system call's error (EIO if it carries none).
fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

/// What the mount serves beyond format version 1 (from the volume's
/// feature flags and what the backing filesystem can do).
#[derive(Debug, Clone, Copy, Default)]
struct Features {
    /// Encrypted extended attributes and POSIX ACLs.
    xattrs: bool,
    /// Those of symlinks and special nodes bound to the node's own id.
    keyless_ids: bool,
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
    policy: Arc<AccessControl>,
    /// Free space in CIPHERDIR: below its margin new opens are
    /// write-through (None: a volume opened read-only, or not watched).
    space: std::sync::OnceLock<SpaceGuard>,
    features: Features,
    /// The root's presented mode, owner and group (`sealfs.root`); `None`:
    /// the cipher directory's own.
    root_attrs: RwLock<Option<crate::volume::rootattrs::RootAttrs>>,
    /// Shared storage: the refresh period (bounds the kernel's caches).
    shared_refresh: Option<Duration>,
    /// Whether other users get through (`allow_other`): then the kernel's
    /// caches keep [`TTL`], else [`PRIVATE_TTL`].
    allow_other: bool,
}

impl SealFs {
    /// Prepares the frontend: opens the root and checks its directory record.
    pub fn new(vol: Arc<Volume>, policy: Arc<AccessControl>) -> Result<Self, VolumeError> {
        let root_fd = vol.root_fd()?;
        let st = backing::stat(root_fd.as_fd(), OsStr::new(""))?;
        let root_dir = vol.load_dir(root_fd.as_fd(), &EncryptionContext::ROOT)?;
        let xattrs = vol.config().has_feature(FEATURE_XATTRS);
        let stored = xattrs && crate::volume::xattrs::backing_supports(root_fd.as_fd());
        if xattrs && !stored {
            tracing::warn!(
                "the backing filesystem does not store user extended attributes: \
                 extended attributes and ACLs are refused on this mount (EOPNOTSUPP)"
            );
        }
        let features = Features {
            xattrs: stored,
            keyless_ids: vol
                .config()
                .has_feature(crate::format::config::FEATURE_KEYLESS_XATTR_IDS),
        };
        let root_attrs = match vol.root_attrs(&root_dir) {
            Ok(a) => a,
            // Damaged (fsck reports it): the root shows the cipher
            // directory's own attributes, which fail closed (0700).
            Err(e) if e.is_integrity() || matches!(e, VolumeError::Io(_)) => {
                tracing::warn!("the root's attributes (sealfs.root) do not open: {e}; showing the cipher directory's");
                None
            }
            Err(e) => return Err(e),
        };
        let table = Table::with_root(root_fd, st.st_ino, root_dir);
        let records = Arc::new(RecordFlusher {
            vol: vol.clone(),
            pending: Mutex::new(Vec::new()),
        });
        Ok(SealFs {
            records,
            inodes: Arc::new(RwLock::new(table)),
            next_node: AtomicU64::new(1 << 62),
            notifier: Arc::new(std::sync::OnceLock::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            daemon_is_root: unsafe { libc::geteuid() } == 0,
            activity: Arc::new(Activity::new()),
            reclaim: ReclaimQueue::new(),
            policy,
            space: std::sync::OnceLock::new(),
            features,
            root_attrs: RwLock::new(root_attrs),
            shared_refresh: vol.shared().map(|s| s.refresh),
            allow_other: true,
            vol,
        })
    }

    /// Says whether the mount lets other users through (`allow_other`;
    /// assumed until told otherwise): a private mount lets the kernel
    /// cache entries and attributes for ten seconds, not one.
    pub fn set_allow_other(&mut self, yes: bool) {
        self.allow_other = yes;
    }

    /// How long the kernel may keep an entry or attributes: [`TTL`] on a
    /// mount other users reach, [`PRIVATE_TTL`] on a private one, and in
    /// shared-storage mode no longer than the refresh period, so a name
    /// another host renamed or removed goes within it.
    pub(crate) fn ttl(&self) -> Duration {
        match self.shared_refresh {
            Some(r) => r.min(TTL),
            None if self.allow_other => TTL,
            None => PRIVATE_TTL,
        }
    }

    /// The open flags of a file read through the page cache: kept across
    /// opens (`FOPEN_KEEP_CACHE`: this daemon is the only writer), or in
    /// shared-storage mode dropped at every open, so an open sees what
    /// another host wrote and closed (close-to-open).
    pub(crate) fn cached_open(&self) -> fuser::FopenFlags {
        if self.shared_refresh.is_some() {
            fuser::FopenFlags::empty()
        } else {
            fuser::FopenFlags::FOPEN_KEEP_CACHE
        }
    }

    /// Watches the free space in CIPHERDIR (writable volumes): while it is
    /// below `margin` (default: see [`SpaceGuard`]) files are opened
    /// write-through, so a full disk shows at `write()`. `mountpoint`
    /// finds the mount's dirty limit for the default margin.
    pub fn watch_space(&self, margin: Option<u64>, mountpoint: Option<&Path>) {
        if self.vol.read_only() {
            return;
        }
        match self.vol.root_fd() {
            Ok(fd) => {
                let _ = self.space.set(SpaceGuard::new(fd, margin, mountpoint));
            }
            Err(e) => tracing::warn!("free space not watched: {e}"),
        }
    }

    /// Whether a file opened for writing now goes write-through.
    pub(crate) fn write_through(&self) -> bool {
        self.space.get().is_some_and(SpaceGuard::write_through)
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
}

impl fuser::Filesystem for SealFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        session::ask_kernel(config, self.features.xattrs, self.shared_refresh.is_some());
        self.records.spawn();
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
        ops::dir::lookup(self, req, parent, name, reply)
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.unref(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Getattr);
        ops::getattr(self, req, ino, reply)
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
        let set = ops::SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        };
        ops::setattr(self, req, ino, set, reply)
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Readlink);
        ops::readlink(self, req, ino, reply)
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
        let is_dir = false;
        match self.creation_mode(req, parent, mode, umask, is_dir) {
            Ok((mode, inherited)) => {
                ops::dir::mknod(self, req, parent, name, (mode, inherited), rdev, reply)
            }
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
        match self.creation_mode(req, parent, mode, umask, true) {
            Ok(m) => ops::dir::mkdir(self, req, parent, name, m, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Unlink);
        ops::dir::unlink(self, req, parent, name, reply)
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Rmdir);
        ops::dir::rmdir(self, req, parent, name, reply)
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
        ops::dir::symlink(self, req, parent, link_name, target, reply)
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
        ops::dir::rename(
            self,
            req,
            (parent, name),
            (newparent, newname),
            flags,
            reply,
        )
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Link);
        ops::dir::link(self, req, ino, (newparent, newname), reply)
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Open);
        ops::file::open(self, req, ino, flags, reply)
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
        ops::file::read(self, req, fh, offset, size, reply)
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.activity.touch();
        if self.features.xattrs {
            self.before_write(req, fh, wf);
        }
        let _timed = crate::metrics::timed_write();
        ops::file::write(self, req, fh, offset, data, reply)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.activity.touch();
        // close(): the kernel has written its dirty pages back already
        // (fuse_flush) and reports their errors; this reports a write of
        // a write-through handle that could not be stored (handles.rs).
        match self.flush_file(fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        ops::file::release(self, fh, reply)
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
        ops::file::fsync(self, req, fh, datasync, reply)
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Opendir);
        ops::dir::opendir(self, req, ino, reply)
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Readdir);
        ops::dir::readdir(self, fh, offset, reply)
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: fuser::ReplyDirectoryPlus,
    ) {
        self.activity.touch();
        crate::metrics::op(crate::metrics::Op::Readdir);
        ops::dir::readdirplus(self, fh, offset, reply)
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
        ops::dir::fsyncdir(self, ino, reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        crate::metrics::op(crate::metrics::Op::Statfs);
        ops::statfs(self, reply)
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
        match self.creation_mode(req, parent, mode, umask, false) {
            Ok(m) => ops::file::create(self, req, parent, name, m, flags, reply),
            Err(e) => reply.error(e),
        }
    }

    // Without the xattrs feature (format version 1 volumes, or a backing
    // filesystem without user xattrs) every xattr call is ENOSYS: the
    // kernel answers EOPNOTSUPP itself from then on and never asks for
    // security.capability again.
    fn getxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: fuser::ReplyXattr,
    ) {
        self.activity.touch();
        if !self.features.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        crate::metrics::op(crate::metrics::Op::Getxattr);
        ops::xattr::getxattr(self, req, ino, name, size, reply)
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        self.activity.touch();
        if !self.features.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        crate::metrics::op(crate::metrics::Op::Getxattr);
        ops::xattr::listxattr(self, req, ino, size, reply)
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.activity.touch();
        if !self.features.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        crate::metrics::op(crate::metrics::Op::Setxattr);
        ops::xattr::setxattr(self, req, ino, name, value, flags, reply)
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.activity.touch();
        if !self.features.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        crate::metrics::op(crate::metrics::Op::Setxattr);
        ops::xattr::removexattr(self, req, ino, name, reply)
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
        ops::file::fallocate(self, req, fh, offset, length, mode, reply)
    }
}
