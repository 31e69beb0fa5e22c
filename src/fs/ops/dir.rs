//! Requests on names: lookup, mknod, mkdir, symlink, unlink, rmdir,
//! rename, and listing a directory (opendir, readdir, readdirplus,
//! fsyncdir).
//!
//! Owns: the inode-table and cache bookkeeping around each namespace step.
//! Must never: change a backing name except through `volume::namespace`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, RenameFlags, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, Request,
};

use crate::format::config::FEATURE_HARD_LINKS;
use crate::format::grants::{Access, GrantOp};
use crate::format::header::EncryptionContext;
use crate::format::names::BackingName;
use crate::volume::backing;
use crate::volume::namespace::{self, RenameEnd, RenameOptions};
use crate::volume::EntryKind;

use crate::fs::attr::negative_attr;
use crate::fs::handles::Handle;
use crate::fs::inodes::Inode;
use crate::fs::ops::xattr::Inherited;
use crate::fs::{errno_of, io_errno, FsResult, SealFs};
use crate::policy::{Caller, Event};

impl SealFs {
    /// Creates a keyless node (FIFO, socket, device, symlink) with `make`
    /// under its encrypted name and returns its attributes.
    pub(in crate::fs) fn create_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: Option<u32>,
        make: impl FnOnce(std::os::fd::BorrowedFd<'_>, &BackingName) -> std::io::Result<()>,
    ) -> FsResult<(Arc<Inode>, libc::stat)> {
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
        Self::new_without_xattrs(&inode);
        Ok((inode, st))
    }

    /// The rename itself, after the access checks: the namespace steps,
    /// then the inode table (a replaced target's node, the moved node's
    /// new location).
    pub(in crate::fs) fn do_rename(
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
            // A replaced target's backing inode may be recycled from now on
            // (unless it has other names); a replaced file is freed in the
            // background, like an unlink.
            if t.st.st_ino != st.st_ino {
                self.name_removed(&t.st, np.ino, &dst.entry);
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
            Self::renamed(&m, (p.ino, &src.entry), &np, newname.as_bytes(), &dst.entry);
        }
        Ok(())
    }
}

/// LOOKUP: the node of `name` in `parent` (a miss is cached by the kernel).
pub(in crate::fs) fn lookup(
    fs: &SealFs,
    req: &Request,
    parent: INodeNo,
    name: &OsStr,
    reply: ReplyEntry,
) {
    let r = (|| {
        let _ns = fs.vol.namespace().read();
        let p = fs.inode(parent)?;
        fs.authorize_child(req, &p, name, Access::Lookup, "lookup")?;
        let d = fs.dir_of(&p)?;
        let bn = SealFs::backing_name(&d, name)?;
        let (inode, st) = fs.remember(&p, name.as_bytes(), &bn.entry)?;
        Ok(fs.attr(&inode, &st))
    })();
    match r {
        Ok(a) => reply.entry(&fs.ttl(), &a, Generation(0)),
        // A negative entry (node id 0) with a timeout: the kernel caches
        // the miss, saving the second LOOKUP of stat-then-create patterns
        // (cp, tar, rsync). Safe: only this daemon adds names.
        Err(e) if e == Errno::ENOENT => reply.entry(&fs.ttl(), &negative_attr(), Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// MKNOD (`mode` with the umask applied): a regular file is created like
/// CREATE; anything else is a keyless node.
pub(in crate::fs) fn mknod(
    fs: &SealFs,
    req: &Request,
    parent: INodeNo,
    name: &OsStr,
    (mode, inherited): (u32, Inherited),
    rdev: u32,
    reply: ReplyEntry,
) {
    let r = (|| {
        if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
            let (inode, st, _, _) =
                fs.create_file(req, parent, name, mode & 0o7777, libc::O_EXCL, inherited)?;
            SealFs::close_content(&inode);
            return Ok(fs.attr(&inode, &st));
        }
        let (inode, st) = fs.create_node(req, parent, name, Some(mode), |dir, bn| {
            namespace::create_special(dir, bn, mode, rdev as u64)
        })?;
        if fs.xattrs_on() {
            fs.apply_inherited(req, &inode, inherited)?;
        }
        Ok(fs.attr(&inode, &st))
    })();
    fs.dir_changed(parent);
    match r {
        Ok(a) => reply.entry(&fs.ttl(), &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// MKDIR (`mode` with the umask applied): the entry, the audit record
/// (fail-closed), then the directory record, durable soon after.
pub(in crate::fs) fn mkdir(
    fs: &SealFs,
    req: &Request,
    parent: INodeNo,
    name: &OsStr,
    (mode, inherited): (u32, Inherited),
    reply: ReplyEntry,
) {
    let r = (|| {
        fs.check_writable()?;
        let caller = Caller::of(req);
        let _ns = fs.vol.namespace().read();
        let p = fs.inode(parent)?;
        let mut grant = fs.authorize_child(
            req,
            &p,
            name,
            Access::Op(GrantOp::Create),
            "generate_data_key",
        )?;
        let d = fs.dir_of(&p)?;
        let key = fs.key_for_new_entry(&p)?;
        let version = fs.vol.keyring().read().primary_of(key).unwrap_or(0);
        let path = || SealFs::child_path(&p, name.as_bytes());
        fs.check_key_use(caller, version, true, &mut || path())?;
        let create = (Access::Op(GrantOp::Create), "generate_data_key");
        fs.authorize_key_use(caller, version, create, || vec![path()], &mut grant)?;
        let bn = SealFs::backing_name(&d, name)?;
        let pfd = p.dir_fd()?;
        // Removed again (records, entry, sidecar) unless kept below.
        let new = namespace::create_dir(pfd, &bn, (mode & 0o7777) | 0o700).map_err(io_errno)?;
        // If the new entry cannot be looked up, it is left as it is (it
        // may not be this mount's any more).
        let (inode, st) = match fs.remember(&p, name.as_bytes(), &bn.entry) {
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
        if fs.audit_paths() {
            let path = SealFs::child_path(&p, name.as_bytes());
            // Fail-closed: no record, no new directory.
            fs.policy.record(
                caller,
                Event {
                    key_version: fs.vol.keyring().read().primary_of(key),
                    grant: grant.as_ref().map(|g| g.id.as_str()),
                    detail: Some("directory".into()),
                    ..Event::ok("generate_data_key", Some(&path))
                },
            )?;
        }
        let dir = new
            .init_dir_with_key(&fs.vol, dfd, &ctx, key)
            .map_err(|e| errno_of(&e))?;
        new.keep();
        *inode.dir.write() = Some(Arc::new(dir));
        inode.record_pending.store(true, Ordering::Release);
        fs.records.pending.lock().push(inode.clone());
        fs.chown_new(&p, &bn.entry, req);
        if let Err(e) = SealFs::set_new_mode(pfd, OsStr::new(&bn.entry), mode) {
            tracing::warn!(
                ino = inode.ino,
                "cannot set the mode of a new directory: {e:?}"
            );
        }
        if fs.xattrs_on() {
            fs.apply_inherited(req, &inode, inherited)?;
        }
        let st = backing::stat(dfd, OsStr::new("")).unwrap_or(st);
        Ok(fs.attr(&inode, &st))
    })();
    fs.dir_changed(parent);
    match r {
        Ok(a) => reply.entry(&fs.ttl(), &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// UNLINK: the name goes at once; a file's blocks are freed off the
/// request path.
pub(in crate::fs) fn unlink(
    fs: &SealFs,
    req: &Request,
    parent: INodeNo,
    name: &OsStr,
    reply: ReplyEmpty,
) {
    let r = (|| {
        fs.check_writable()?;
        let _ns = fs.vol.namespace().write();
        let p = fs.inode(parent)?;
        fs.authorize_child(req, &p, name, Access::Op(GrantOp::Delete), "delete")?;
        let d = fs.dir_of(&p)?;
        let bn = SealFs::backing_name(&d, name)?;
        let ctx = EncryptionContext {
            parent_dir_id: d.id,
            name: name.as_bytes(),
        };
        // The removed file stays pinned, so that freeing its blocks
        // happens when the pin is closed, in the background.
        let end = RenameEnd {
            dir: p.dir_fd()?,
            name: &bn,
            ctx: &ctx,
        };
        let removed = namespace::remove_name(&fs.vol, end).map_err(io_errno)?;
        fs.name_removed(&removed.st, p.ino, &bn.entry);
        fs.reclaim_unlinked(removed.fd, &removed.st);
        Ok(())
    })();
    fs.dir_changed(parent);
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// RMDIR of an empty directory.
pub(in crate::fs) fn rmdir(
    fs: &SealFs,
    req: &Request,
    parent: INodeNo,
    name: &OsStr,
    reply: ReplyEmpty,
) {
    let r = (|| {
        fs.check_writable()?;
        let _ns = fs.vol.namespace().write();
        let p = fs.inode(parent)?;
        fs.authorize_child(req, &p, name, Access::Op(GrantOp::Delete), "delete")?;
        let d = fs.dir_of(&p)?;
        let bn = SealFs::backing_name(&d, name)?;
        let removed = namespace::rmdir(p.dir_fd()?, &bn).map_err(io_errno)?;
        fs.drop_backing(removed.st_ino);
        Ok(())
    })();
    fs.dir_changed(parent);
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// SYMLINK: the target is sealed under the root directory's key.
pub(in crate::fs) fn symlink(
    fs: &SealFs,
    req: &Request,
    parent: INodeNo,
    link_name: &OsStr,
    target: &Path,
    reply: ReplyEntry,
) {
    let r = (|| {
        // Symlink targets are sealed under the root directory's key, not
        // the parent's, so a symlink moves between directories by a
        // plain rename.
        let sealed = fs
            .root_dir()?
            .names
            .seal_symlink_target(target.as_os_str().as_bytes())
            .map_err(|_| Errno::ENAMETOOLONG)?;
        let (inode, st) = fs.create_node(req, parent, link_name, None, |dir, bn| {
            namespace::create_symlink(dir, bn, &sealed)
        })?;
        Ok(fs.attr(&inode, &st))
    })();
    fs.dir_changed(parent);
    match r {
        Ok(a) => reply.entry(&fs.ttl(), &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// RENAME: both ends must be within a grant's reach; recorded before
/// (fail-closed), and a failure recorded after.
pub(in crate::fs) fn rename(
    fs: &SealFs,
    req: &Request,
    (parent, name): (INodeNo, &OsStr),
    (newparent, newname): (INodeNo, &OsStr),
    flags: RenameFlags,
    reply: ReplyEmpty,
) {
    let r = (|| {
        let caller = Caller::of(req);
        let (p, np) = (fs.inode(parent)?, fs.inode(newparent)?);
        let needs_paths = fs.audit_paths() || !fs.policy.is_owner(caller.uid);
        let (from, to) = if needs_paths {
            let _ns = fs.vol.namespace().read();
            (
                SealFs::child_path(&p, name.as_bytes()),
                SealFs::child_path(&np, newname.as_bytes()),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        // Both ends must lie in a prefix with the rename operation: no
        // moving data out of (or into) a grant's reach.
        let rename = Access::Op(GrantOp::Rename);
        let grant = fs
            .policy
            .authorize(caller, || from.clone(), rename, "re_encrypt")?;
        fs.policy
            .authorize(caller, || to.clone(), rename, "re_encrypt")?;
        // The key of the entry moved (read only when records are kept).
        let key_version = if fs.audit_paths() {
            let _ns = fs.vol.namespace().read();
            fs.key_version_at(&p, name)
        } else {
            None
        };
        let event = |outcome, error| Event {
            key_version,
            grant: grant.as_ref().map(|g| g.id.as_str()),
            outcome,
            error,
            detail: Some(format!("from {}", String::from_utf8_lossy(&from))),
            ..Event::ok("re_encrypt", Some(&to))
        };
        // Recorded before (fail-closed); a failure is recorded after.
        fs.policy.record(caller, event("ok", None))?;
        let r = fs.do_rename(parent, name, newparent, newname, flags);
        if let Err(e) = r {
            if e != Errno::ENOENT && e != Errno::EEXIST && e != Errno::ENOTEMPTY {
                let _ = fs
                    .policy
                    .record(caller, event("error", Some(format!("{e:?}"))));
            }
        }
        r
    })();
    fs.dir_changed(parent);
    if newparent != parent {
        fs.dir_changed(newparent);
    }
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// LINK: a new name for an existing file (or symlink, FIFO, …). Needs
/// the `hard-links` feature (EPERM without, as before it). The file is
/// reached through the name it was last looked up by, which its link table
/// vouches for; a grantee needs read access to it and create access at
/// the new name. Recorded before (fail-closed), as a re-binding of the
/// file's key to a new context.
pub(in crate::fs) fn link(
    fs: &SealFs,
    req: &Request,
    ino: INodeNo,
    (newparent, newname): (INodeNo, &OsStr),
    reply: ReplyEntry,
) {
    let r = (|| {
        fs.check_writable()?;
        if !fs.vol.config().has_feature(FEATURE_HARD_LINKS) {
            return Err(Errno::EPERM);
        }
        let caller = Caller::of(req);
        let ns = fs.vol.namespace().write();
        let inode = fs.inode(ino)?;
        if inode.kind == EntryKind::Dir {
            return Err(Errno::EPERM);
        }
        let np = fs.inode(newparent)?;
        let grant = fs.policy.authorize_any(
            caller,
            || SealFs::paths_of(&inode),
            Access::Op(GrantOp::Read),
            "re_encrypt",
        )?;
        fs.authorize_child(req, &np, newname, Access::Op(GrantOp::Create), "re_encrypt")?;
        let (pdir, name) = fs.parent_and_name(&inode)?;
        let (parent, entry) = {
            let l = inode.loc.lock();
            (l.parent.clone().ok_or(Errno::EIO)?, l.entry.clone())
        };
        let npdir = fs.dir_of(&np)?;
        let dst = SealFs::backing_name(&npdir, newname)?;
        let src = BackingName {
            entry,
            sidecar: None,
        };
        let old_ctx = EncryptionContext {
            parent_dir_id: pdir.id,
            name: &name,
        };
        let new_ctx = EncryptionContext {
            parent_dir_id: npdir.id,
            name: newname.as_bytes(),
        };
        if fs.audit_paths() && inode.kind == EntryKind::File {
            let to = SealFs::child_path(&np, newname.as_bytes());
            let from = SealFs::path_of(&inode);
            fs.policy.record(
                caller,
                Event {
                    // Read under the namespace lock this request holds.
                    key_version: fs
                        .vol
                        .entry_key_version(parent.dir_fd()?, OsStr::new(&src.entry)),
                    grant: grant.as_ref().map(|g| g.id.as_str()),
                    detail: Some(format!("link from {}", String::from_utf8_lossy(&from))),
                    ..Event::ok("re_encrypt", Some(&to))
                },
            )?;
        }
        namespace::link(
            &fs.vol,
            RenameEnd {
                dir: parent.dir_fd()?,
                name: &src,
                ctx: &old_ctx,
            },
            RenameEnd {
                dir: np.dir_fd()?,
                name: &dst,
                ctx: &new_ctx,
            },
        )
        .map_err(|e| {
            if e.is_integrity() {
                tracing::warn!(ino = inode.ino, "link: {e}");
            }
            errno_of(&e)
        })?;
        let (linked, st) = fs.remember(&np, newname.as_bytes(), &dst.entry)?;
        // A symlink's attributes read its target under the namespace lock.
        drop(ns);
        Ok(fs.attr(&linked, &st))
    })();
    fs.dir_changed(newparent);
    match r {
        Ok(a) => reply.entry(&fs.ttl(), &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// OPENDIR: the listing is taken now (from the cache when unchanged).
pub(in crate::fs) fn opendir(fs: &SealFs, req: &Request, ino: INodeNo, reply: ReplyOpen) {
    let r = (|| {
        let caller = Caller::of(req);
        let inode = fs.inode(ino)?;
        let list = (Access::Op(GrantOp::List), "list");
        let mut grant = fs
            .policy
            .authorize(caller, || SealFs::path_of(&inode), list.0, list.1)?;
        let version = fs.vol.dir_key_version(&*fs.dir_of(&inode)?);
        fs.check_key_use(caller, version, false, &mut || SealFs::path_of(&inode))?;
        fs.authorize_key_use(
            caller,
            version,
            list,
            || vec![SealFs::path_of(&inode)],
            &mut grant,
        )?;
        let entries = fs.list_dir(&inode)?;
        if fs.audit_paths() {
            let path = SealFs::path_of(&inode);
            fs.policy.record(
                caller,
                Event {
                    key_version: Some(version),
                    grant: grant.as_ref().map(|g| g.id.as_str()),
                    ..Event::ok("list", Some(&path))
                },
            )?;
        }
        // No FOPEN_CACHE_DIR: entries served from the kernel's readdir
        // cache come without attributes, so `ls -l` would then cost a
        // LOOKUP per entry instead of one READDIRPLUS; the listing is
        // cached here instead (see list_dir).
        Ok(fs.new_handle(Handle::Dir(inode, entries)))
    })();
    match r {
        Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
        Err(e) => reply.error(e),
    }
}

/// READDIR from the listing taken at opendir.
pub(in crate::fs) fn readdir(fs: &SealFs, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
    let h = match fs.file_handle(fh) {
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
pub(in crate::fs) fn readdirplus(
    fs: &SealFs,
    fh: FileHandle,
    offset: u64,
    mut reply: fuser::ReplyDirectoryPlus,
) {
    let h = match fs.file_handle(fh) {
        Ok(h) => h,
        Err(e) => return reply.error(e),
    };
    let Handle::Dir(dir, entries) = &*h else {
        return reply.error(Errno::ENOTDIR);
    };
    for (i, e) in entries.iter().enumerate().skip(offset as usize) {
        let (attr, counted) = match &e.entry {
            None => match fs.stat_inode(dir) {
                Ok(mut a) => {
                    a.ino = INodeNo(e.ino);
                    (a, None)
                }
                Err(_) => continue,
            },
            Some(entry) => match fs.remember(dir, e.name.as_bytes(), entry) {
                Ok((inode, st)) => (fs.attr(&inode, &st), Some(inode.ino)),
                Err(_) => continue, // removed since opendir
            },
        };
        if reply.add(
            attr.ino,
            (i + 1) as u64,
            &e.name,
            &fs.ttl(),
            &attr,
            Generation(0),
        ) {
            if let Some(ino) = counted {
                fs.unref(ino, 1);
            }
            break;
        }
    }
    reply.ok();
}

/// FSYNCDIR: this directory's and its ancestors' records, then its entries.
pub(in crate::fs) fn fsyncdir(fs: &SealFs, ino: INodeNo, reply: ReplyEmpty) {
    let r = fs.inode(ino).and_then(|i| {
        fs.persist_records(&i)?;
        backing::sync_dir(i.dir_fd()?).map_err(io_errno)
    });
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}
