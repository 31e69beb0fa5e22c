//! Open handles: a file handle holds the shared content of its inode (one
//! [`SealedFile`] per open inode, opened once and counted) and the grant it
//! was opened through, checked again on every use; a directory handle holds
//! the listing taken at opendir.
//!
//! Owns: handle numbers, opening and closing an inode's content, and the
//! count of open handles for idleness.
//! Must never: re-read or re-verify a header per request.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use fuser::{Errno, FileHandle, Request};
use parking_lot::RwLock;

use crate::format::header::EncryptionContext;
use crate::policy::grants::LiveGrant;
use crate::volume::backing;
use crate::volume::content::{SealedFile, WriteSealer};
use crate::volume::VolumeError;

use crate::fs::inodes::Inode;
use crate::fs::listing::Listed;
use crate::fs::{errno_of, FsResult, SealFs};
use crate::policy::{Caller, Event};

/// Why a file's content could not be opened.
pub(super) struct OpenFailure {
    pub(super) errno: Errno,
    /// The integrity failure (tampered or moved ciphertext), if that was it.
    pub(super) integrity: Option<String>,
}

impl From<Errno> for OpenFailure {
    fn from(errno: Errno) -> Self {
        OpenFailure {
            errno,
            integrity: None,
        }
    }
}

/// What an open file's content says that never changes while it is open,
/// kept with its handles so that a request need not wait for the content
/// lock (held by a write in progress) to learn it.
pub(super) struct OpenFacts {
    /// The master key version that unwrapped the data key.
    key_version: u32,
    /// The chunk cipher, to seal a write's whole chunks before the lock.
    sealer: Option<WriteSealer>,
}

pub(super) enum Handle {
    /// An open file, the grant it was opened through (None: the owner),
    /// the count of its content's failed writes this handle has reported
    /// (see [`SealFs::flush_file`]), and what never changes while the
    /// content is open (read without its lock).
    File(
        Arc<Inode>,
        Arc<RwLock<SealedFile>>,
        Option<Arc<LiveGrant>>,
        AtomicU32,
        OpenFacts,
    ),
    Dir(Arc<Inode>, Arc<Vec<Listed>>),
}

impl SealFs {
    /// Opens (or shares) the content of a file inode.
    pub(super) fn open_content(&self, inode: &Arc<Inode>) -> FsResult<Arc<RwLock<SealedFile>>> {
        self.open_content_why(inode).map_err(|f| f.errno)
    }

    /// Like [`SealFs::open_content`], saying whether a failure was an
    /// integrity failure (for the audit log).
    pub(super) fn open_content_why(
        &self,
        inode: &Arc<Inode>,
    ) -> Result<Arc<RwLock<SealedFile>>, OpenFailure> {
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
        if sealed.stray_tail() > 0 {
            inode.stale_size.store(true, Ordering::Relaxed);
        }
        let f = Arc::new(RwLock::new(sealed));
        st.count = 1;
        st.file = Some(f.clone());
        Ok(f)
    }

    /// Drops one user of an inode's content; the last one closes it.
    pub(super) fn close_content(inode: &Inode) {
        let mut st = inode.open.lock();
        st.count = st.count.saturating_sub(1);
        if st.count == 0 {
            st.file = None;
        }
    }

    /// A file handle on `f` (opened through `grant`), reporting the
    /// content's write failures from now on.
    pub(super) fn file_handle_on(
        inode: Arc<Inode>,
        f: Arc<RwLock<SealedFile>>,
        grant: Option<Arc<LiveGrant>>,
    ) -> Handle {
        let (seen, facts) = {
            let sf = f.read();
            let facts = OpenFacts {
                key_version: sf.key_version(),
                sealer: sf.write_sealer(),
            };
            (AtomicU32::new(sf.write_errors().0), facts)
        };
        Handle::File(inode, f, grant, seen, facts)
    }

    /// FLUSH (every close of a file descriptor): the error of a write of
    /// this file that could not be stored since the handle last reported
    /// one, once, as ext4 and NFS report a writeback error at close. No
    /// sync: the kernel has already written its dirty pages back (and
    /// reports their errors itself); this covers write-through handles,
    /// whose write() already failed, and a failure through another handle.
    pub(super) fn flush_file(&self, fh: FileHandle) -> FsResult<()> {
        let h = self.file_handle(fh)?;
        let Handle::File(_, f, _, seen, _) = &*h else {
            return Ok(());
        };
        let (count, errno) = f.read().write_errors();
        if seen.swap(count, Ordering::Relaxed) != count {
            return Err(Errno::from_i32(errno));
        }
        Ok(())
    }

    /// Registers a handle and returns its number.
    pub(super) fn new_handle(&self, h: Handle) -> u64 {
        crate::metrics::handle_opened(matches!(h, Handle::File(..)));
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut handles = self.handles.lock();
        handles.insert(fh, Arc::new(h));
        self.activity
            .open
            .store(handles.len() as u64, Ordering::Relaxed);
        fh
    }

    /// Takes a handle out (RELEASE, RELEASEDIR).
    pub(super) fn remove_handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
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

    /// The handle with number `fh`.
    pub(super) fn file_handle(&self, fh: FileHandle) -> FsResult<Arc<Handle>> {
        self.handles.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The content of an open file handle, if the grant it was opened
    /// through (if any) still stands.
    pub(super) fn content_of(
        &self,
        req: &Request,
        fh: FileHandle,
    ) -> FsResult<Arc<RwLock<SealedFile>>> {
        self.checked_content(req, fh, false).map(|(f, _)| f)
    }

    /// [`SealFs::content_of`] for a WRITE, with the file's
    /// [`WriteSealer`] (None in the last-chunk-flag format).
    pub(super) fn content_for_write(
        &self,
        req: &Request,
        fh: FileHandle,
    ) -> FsResult<(Arc<RwLock<SealedFile>>, Option<WriteSealer>)> {
        self.checked_content(req, fh, false)
    }

    /// [`SealFs::content_of`] for a READ: the first read after an open
    /// may also update the file's atime (see `SealFs::note_read`).
    pub(super) fn content_for_read(
        &self,
        req: &Request,
        fh: FileHandle,
    ) -> FsResult<Arc<RwLock<SealedFile>>> {
        self.checked_content(req, fh, true).map(|(f, _)| f)
    }

    /// Shared storage: the content lock of `f`'s backing file (exclusive
    /// for a `write`), and `f` read again from disk under it (another host
    /// may have written it), handed back for reading. `None` otherwise.
    pub(super) fn shared_content<'a>(
        &self,
        f: &'a RwLock<SealedFile>,
        write: bool,
    ) -> Result<
        Option<(
            crate::volume::shared::ResourceGuard,
            parking_lot::RwLockReadGuard<'a, SealedFile>,
        )>,
        crate::volume::VolumeError,
    > {
        if self.vol.shared().is_none() {
            return Ok(None);
        }
        // The backing inode first: no guard of `f` is held while waiting
        // for the lock (its holder, a thread of this daemon too, may be
        // waiting for `f`).
        let ino = {
            let sf = f.read();
            crate::sys::fstat(std::os::fd::AsFd::as_fd(sf.backing()))?.st_ino
        };
        let locked = self.vol.lock_content(ino, write)?;
        let Some(locked) = locked else {
            return Ok(None);
        };
        let mut sf = f.write();
        sf.reload_from_disk()?;
        Ok(Some((locked, parking_lot::RwLockWriteGuard::downgrade(sf))))
    }

    /// Changes `f` with `op` (a write, truncate or allocation) under its
    /// write lock; in shared-storage mode also under the backing file's
    /// exclusive content lock, from its size and group states read again
    /// under it (another host may have changed the file).
    pub(super) fn change_content<T>(
        &self,
        f: &RwLock<SealedFile>,
        op: impl FnOnce(&mut SealedFile) -> Result<T, crate::volume::VolumeError>,
    ) -> Result<T, crate::volume::VolumeError> {
        match self.shared_content(f, true)? {
            Some((locked, reloaded)) => {
                drop(reloaded);
                let r = op(&mut f.write());
                drop(locked);
                r
            }
            None => op(&mut f.write()),
        }
    }

    fn checked_content(
        &self,
        req: &Request,
        fh: FileHandle,
        reading: bool,
    ) -> FsResult<(Arc<RwLock<SealedFile>>, Option<WriteSealer>)> {
        self.check_enabled()?;
        match &*self.file_handle(fh)? {
            Handle::File(inode, f, grant, _, facts) => {
                if let Some(g) = grant {
                    self.policy
                        .check_handle(Caller::of(req), g, "use_handle", || Self::path_of(inode))?;
                }
                self.check_key_version(facts.key_version)?;
                if reading && inode.atime_due.load(std::sync::atomic::Ordering::Relaxed) {
                    self.note_read(inode);
                }
                let sealer = if reading { None } else { facts.sealer.clone() };
                Ok((f.clone(), sealer))
            }
            Handle::Dir(..) => Err(Errno::EISDIR),
        }
    }

    /// Before a WRITE (FUSE_HANDLE_KILLPRIV_V2): the kernel's
    /// FUSE_WRITE_KILL_SUIDGID clears set-ID bits, and a file capability
    /// goes with any write.
    pub(super) fn before_write(&self, req: &Request, fh: FileHandle, wf: fuser::WriteFlags) {
        let Ok(h) = self.file_handle(fh) else { return };
        let Handle::File(inode, ..) = &*h else { return };
        if wf.contains(fuser::WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            self.kill_suid_sgid(inode);
        }
        self.kill_caps(req, inode);
    }

    /// Records an integrity failure seen on an open file.
    pub(super) fn record_integrity(&self, req: &Request, fh: FileHandle, e: &VolumeError) {
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
}
