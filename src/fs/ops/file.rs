//! Requests on open files: create, open, read, write, fsync, release,
//! fallocate. Read and write are the hot path: no allocation (per-thread
//! buffers), no lock but the file's own, no header read.
//!
//! Owns: which handle sees which content, and the audit record of opening a
//! file's data key.
//! Must never: read or write content except through the open
//! [`SealedFile`] of a handle.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, OpenFlags, ReplyCreate, ReplyData,
    ReplyEmpty, ReplyOpen, ReplyWrite, Request,
};
use parking_lot::RwLock;

use crate::format::grants::{Access, GrantOp};
use crate::format::header::EncryptionContext;
use crate::policy::grants::{op_for_open, LiveGrant};
use crate::volume::content::{SealedFile, SCRATCH_MAX};
use crate::volume::namespace;
use crate::volume::EntryKind;

use crate::fs::handles::{Handle, OpenFailure};
use crate::fs::inodes::Inode;
use crate::fs::ops::xattr::Inherited;
use crate::fs::{errno_of, io_errno, FsResult, SealFs};
use crate::policy::{Caller, Event};

/// A file made (or opened) by create: its inode, backing stat, shared
/// content, and the grant that allowed it (None: the owner).
pub(in crate::fs) type CreatedFile = (
    Arc<Inode>,
    libc::stat,
    Arc<RwLock<SealedFile>>,
    Option<Arc<LiveGrant>>,
);

impl SealFs {
    pub(in crate::fs) fn create_file(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
        inherited: Inherited,
    ) -> FsResult<CreatedFile> {
        self.check_writable()?;
        let caller = Caller::of(req);
        let _ns = self.vol.namespace().read();
        let pinode = self.inode(parent)?;
        let mut grant = self.authorize_child(
            req,
            &pinode,
            name,
            Access::Op(GrantOp::Create),
            "generate_data_key",
        )?;
        let pdir = self.dir_of(&pinode)?;
        let key = self.key_for_new_entry(&pinode)?;
        let version = self.vol.keyring().read().primary_of(key).unwrap_or(0);
        let path = || Self::child_path(&pinode, name.as_bytes());
        self.check_key_use(caller, version, true, &mut || path())?;
        let create = (Access::Op(GrantOp::Create), "generate_data_key");
        self.authorize_key_use(caller, version, create, || vec![path()], &mut grant)?;
        let bn = Self::backing_name(&pdir, name)?;
        let pfd = pinode.dir_fd()?;
        // The name exists (create without O_EXCL): that file, opened.
        let open_existing = |ns| -> FsResult<CreatedFile> {
            drop(ns);
            let (inode, st) = self.remember(&pinode, name.as_bytes(), &bn.entry)?;
            let mut grant = self.policy.authorize_any(
                caller,
                || Self::paths_of(&inode),
                Access::Op(op_for_open(flags)),
                "encrypt",
            )?;
            let f = self.open_content(&inode)?;
            let version = f.read().key_version();
            if let Err(e) = self.record_open(caller, &inode, "encrypt", version, &mut grant) {
                Self::close_content(&inode);
                return Err(e);
            }
            Ok((inode, st, f, grant))
        };
        let exists = |e: &std::io::Error| e.raw_os_error() == Some(libc::EEXIST);
        // Removed again (with its sidecar) unless kept at the end; unnamed
        // until then where the backing filesystem can.
        let mut new = match namespace::create_file(pfd, &bn, mode & 0o7777) {
            Ok(new) => new,
            Err(e) if exists(&e) && flags & libc::O_EXCL == 0 => return open_existing(_ns),
            Err(e) => return Err(io_errno(e)),
        };
        crate::keyring::kill_point("file-entry-made");
        if self.new_entry_needs_owner(req) {
            if let Err(e) = new.give_to(req.uid(), req.gid()) {
                tracing::warn!("chown of new entry failed: {e}");
            }
        }
        let ctx = EncryptionContext {
            parent_dir_id: pdir.id,
            name: name.as_bytes(),
        };
        let sealed = new
            .seal_file_with_key(&self.vol, &ctx, key)
            .map_err(|e| errno_of(&e))?;
        // The mode is set after the header is written (until then the
        // backing file has at most the bits asked for: the daemon's umask
        // only takes bits away, the chown above clears set-ID bits), so
        // its one stat is also the reply's.
        let st = new.finish_mode(sealed.backing(), mode).map_err(io_errno)?;
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
        match new.keep_file(sealed.backing()) {
            Ok(()) => {}
            // Taken since the kernel looked the name up (another host, or
            // the cipher dir changed underneath).
            Err(e) if exists(&e) && flags & libc::O_EXCL == 0 => return open_existing(_ns),
            Err(e) => return Err(io_errno(e)),
        }
        // An unnamed file is stat'ed once named (its link count and ctime).
        let st = match st {
            Some(st) => st,
            None => {
                crate::sys::fstat(std::os::fd::AsFd::as_fd(sealed.backing())).map_err(io_errno)?
            }
        };
        let (inode, st) = self.remember_stat(&pinode, name.as_bytes(), &bn.entry, st)?;
        if self.xattrs_on() {
            self.apply_inherited(req, &inode, inherited)?;
        }
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
}

/// OPEN: the grant check, the file's content (shared with other handles),
/// and the audit record of the data key's use (fail-closed).
pub(in crate::fs) fn open(
    fs: &SealFs,
    req: &Request,
    ino: INodeNo,
    flags: OpenFlags,
    reply: ReplyOpen,
) {
    let caller = Caller::of(req);
    let r = (|| {
        let inode = fs.inode(ino)?;
        if inode.kind != EntryKind::File {
            return Err(if inode.kind == EntryKind::Dir {
                Errno::EISDIR
            } else {
                Errno::EACCES
            });
        }
        if fs.vol.read_only() && flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Errno::EROFS);
        }
        let gop = op_for_open(flags.0);
        let op = if gop == GrantOp::Read {
            "decrypt"
        } else {
            "encrypt"
        };
        let mut grant =
            fs.policy
                .authorize_any(caller, || SealFs::paths_of(&inode), Access::Op(gop), op)?;
        let f = match fs.open_content_why(&inode) {
            Ok(f) => f,
            Err(OpenFailure { errno, integrity }) => {
                if fs.audit_paths() {
                    let path = SealFs::path_of(&inode);
                    let (op, error) = match integrity {
                        Some(why) => ("integrity_failure", why),
                        None => (op, format!("{errno:?}")),
                    };
                    let _ = fs.policy.record(
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
        if let Err(e) = fs.record_open(caller, &inode, op, version, &mut grant) {
            SealFs::close_content(&inode);
            return Err(e);
        }
        SealFs::note_open(&inode);
        // Through a grant, every read and write reaches the daemon (no
        // page cache), so revoking the grant stops an open handle at once.
        // Near a full disk, a writer goes write-through so that ENOSPC
        // reaches write() (fs/space.rs).
        // A size the kernel holds larger than the sealed one: direct I/O,
        // so a read ends at the sealed size (inodes.rs, stale_size).
        let writer = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let stale = inode.stale_size.load(std::sync::atomic::Ordering::Relaxed);
        let flags = if grant.is_some() || stale || (writer && fs.write_through()) {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            fs.cached_open()
        };
        Ok((
            fs.new_handle(SealFs::file_handle_on(inode, f, grant)),
            flags,
        ))
    })();
    match r {
        Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
        Err(e) => reply.error(e),
    }
}

/// READ into a per-thread buffer (no allocation per request).
pub(in crate::fs) fn read(
    fs: &SealFs,
    req: &Request,
    fh: FileHandle,
    offset: u64,
    size: u32,
    reply: ReplyData,
) {
    thread_local! {
        /// Decrypted bytes of this thread's current READ (reused).
        static READ_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let f = match fs.content_for_read(req, fh) {
        Ok(f) => f,
        Err(e) => return reply.error(e),
    };
    let size = (size as usize).min(SCRATCH_MAX);
    READ_SCRATCH.with_borrow_mut(|buf| {
        let r = match fs.shared_content(&f, false) {
            Ok(Some((_locked, sf))) => sf.read_into(offset, size, buf),
            Ok(None) => f.read().read_into(offset, size, buf),
            Err(e) => Err(e),
        };
        match r {
            Ok(range) => {
                crate::metrics::read_bytes(range.len());
                reply.data(&buf[range])
            }
            Err(e) => {
                if e.is_integrity() {
                    tracing::warn!(fh = fh.0, offset, "integrity failure: {e}");
                    fs.record_integrity(req, fh, &e);
                }
                reply.error(errno_of(&e))
            }
        }
    })
}

/// WRITE through the handle's content (the file's write lock).
pub(in crate::fs) fn write(
    fs: &SealFs,
    req: &Request,
    fh: FileHandle,
    offset: u64,
    data: &[u8],
    reply: ReplyWrite,
) {
    let r = fs
        .check_writable()
        .and_then(|_| fs.content_for_write(req, fh))
        .and_then(|(f, sealer)| {
            // The whole chunks are sealed before the lock: the request
            // before this one may still be storing (see
            // volume::content::preseal).
            let r = sealer
                .map(|s| s.preseal(offset, data))
                .transpose()
                .map(Option::flatten)
                .and_then(|mut pre| {
                    fs.change_content(&f, |sf| sf.write_presealed(offset, data, pre.as_mut()))
                });
            r.map_err(|e| {
                if e.is_integrity() {
                    tracing::warn!(fh = fh.0, offset, "integrity failure during write: {e}");
                    fs.record_integrity(req, fh, &e);
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

/// RELEASE: the handle goes; the content closes with its last handle.
pub(in crate::fs) fn release(fs: &SealFs, fh: FileHandle, reply: ReplyEmpty) {
    let h = fs.remove_handle(fh);
    if let Some(h) = h {
        if let Handle::File(inode, ..) = &*h {
            SealFs::close_content(inode);
        }
    }
    reply.ok();
}

/// FSYNC: the records of the file's directories, then the file.
pub(in crate::fs) fn fsync(
    fs: &SealFs,
    req: &Request,
    fh: FileHandle,
    datasync: bool,
    reply: ReplyEmpty,
) {
    let r = fs.file_handle(fh).and_then(|h| match &*h {
        Handle::File(inode, ..) => fs.persist_records(inode),
        Handle::Dir(..) => Ok(()),
    });
    let r = r.and_then(|_| fs.content_of(req, fh)).and_then(|f| {
        let g = f.read();
        // A write that could not be stored poisons the file (volume/content):
        // fsync says so until the size is set again.
        if let Some(errno) = g.poisoned() {
            return Err(Errno::from_i32(errno));
        }
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

/// CREATE (`mode` with the umask applied): a new file, open.
pub(in crate::fs) fn create(
    fs: &SealFs,
    req: &Request,
    parent: INodeNo,
    name: &OsStr,
    (mode, inherited): (u32, Inherited),
    flags: i32,
    reply: ReplyCreate,
) {
    let r = (|| {
        let (inode, st, f, grant) =
            fs.create_file(req, parent, name, mode & 0o7777, flags, inherited)?;
        let a = fs.attr(&inode, &st);
        let flags = if grant.is_some() || fs.write_through() {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            fs.cached_open()
        };
        let fh = fs.new_handle(SealFs::file_handle_on(inode, f, grant));
        Ok((a, fh, flags))
    })();
    fs.dir_changed(parent);
    match r {
        Ok((a, fh, flags)) => reply.created(&fs.ttl(), &a, Generation(0), FileHandle(fh), flags),
        Err(e) => reply.error(e),
    }
}

/// FALLOCATE: reserves backing space (plain or `FALLOC_FL_KEEP_SIZE`).
pub(in crate::fs) fn fallocate(
    fs: &SealFs,
    req: &Request,
    fh: FileHandle,
    offset: u64,
    length: u64,
    mode: i32,
    reply: ReplyEmpty,
) {
    let r = (|| {
        fs.check_writable()?;
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let f = fs.content_of(req, fh)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let r = fs.change_content(&f, |sf| sf.allocate(offset, length, keep_size));
        r.map_err(|e| errno_of(&e))
    })();
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}
