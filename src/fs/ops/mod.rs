//! The request handlers behind the fuser dispatch in [`super`]: `dir`
//! (names: lookup, create, remove, rename, list), `file` (open files:
//! open, create, read, write, fsync, release, fallocate), and here the
//! requests on any node (getattr, setattr, readlink) or on the mount
//! (statfs), and the checks every handler shares: the key is enabled, the
//! mount is writable, a grant allows the access, the audit record is
//! written (fail-closed).
//!
//! Owns: translating one request into volume calls, access checks and
//! audit records, and its reply.
//! Must never: write a namespace step order of its own (that is
//! `volume::namespace`), make raw system calls, or reply twice.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{Errno, FileHandle, INodeNo, ReplyAttr, ReplyData, ReplyStatfs, Request, TimeOrNow};

use crate::format::grants::{Access, GrantOp};
use crate::format::names::MAX_NAME;
use crate::policy::grants::LiveGrant;
use crate::volume::backing;
use crate::volume::namespace;
use crate::volume::EntryKind;

use crate::fs::attr::time_spec;
use crate::fs::inodes::Inode;
use crate::fs::{errno_of, io_errno, FsResult, SealFs, ROOT};
use crate::policy::{Caller, Event};

pub(in crate::fs) mod dir;
pub(in crate::fs) mod file;
pub(in crate::fs) mod xattr;

impl SealFs {
    /// EACCES while the key is disabled: no key use at all.
    pub(in crate::fs) fn check_enabled(&self) -> FsResult<()> {
        if self.vol.is_disabled() {
            crate::metrics::denied(crate::metrics::Denial::KeyDisabled);
            Err(Errno::EACCES)
        } else {
            Ok(())
        }
    }

    /// EACCES if the key of master key version `version` is disabled,
    /// pending deletion or expired (an open file or a cached directory of
    /// that key stops at once, as a newly opened one would).
    pub(in crate::fs) fn check_key_version(&self, version: u32) -> FsResult<()> {
        if self.vol.version_usable(version) {
            Ok(())
        } else {
            crate::metrics::denied(crate::metrics::Denial::KeyDisabled);
            Err(Errno::EACCES)
        }
    }

    /// EACCES unless the policy of the key owning `version` (if it has
    /// one) lets `caller` use it: `write` for `use:write`, else
    /// `use:read`. `path` is asked only for a policy with a path
    /// condition. Without any key policy this is one atomic load.
    pub(in crate::fs) fn check_key_use(
        &self,
        caller: Caller,
        version: u32,
        write: bool,
        path: &mut dyn FnMut() -> Vec<u8>,
    ) -> FsResult<()> {
        let Some(p) = self.vol.key_policy_of_version(version) else {
            return Ok(());
        };
        let action =
            crate::policy::key_policy::action(if write { "use:write" } else { "use:read" });
        let who = crate::policy::key_policy::Asker {
            uid: caller.uid,
            gid: caller.gid,
            groups: &mut || self.policy.supplementary_groups(caller),
        };
        if p.allows(who, action, crate::sys::now_secs(), path) {
            return Ok(());
        }
        crate::metrics::denied(crate::metrics::Denial::KeyPolicy);
        let kr = self.vol.keyring().read();
        let key = kr
            .key_of_version(version)
            .map(|k| crate::kms::key_label(&kr, k.id))
            .unwrap_or_default();
        drop(kr);
        self.policy.record_denial(
            (caller.uid, caller.gid, caller.pid),
            || self.policy.principal(caller),
            Event {
                outcome: "denied",
                key_version: Some(version),
                error: Some(format!("the policy of {key} does not allow this use")),
                ..Event::ok(if write { "encrypt" } else { "decrypt" }, None)
            },
        );
        Err(Errno::EACCES)
    }

    /// A caller other than the owner uses the key of master key version
    /// `version` through a grant: that grant must name the key (see
    /// [`AccessControl::authorize_key`](crate::policy::AccessControl::authorize_key);
    /// `grant` may be replaced by one that does). The owner: nothing to do.
    pub(in crate::fs) fn authorize_key_use(
        &self,
        caller: Caller,
        version: u32,
        (access, op): (Access, &str),
        paths: impl FnOnce() -> Vec<Vec<u8>>,
        grant: &mut Option<Arc<LiveGrant>>,
    ) -> FsResult<()> {
        if self.policy.is_owner(caller.uid) {
            return Ok(());
        }
        let key = {
            let kr = self.vol.keyring().read();
            kr.key_of_version(version)
                .map_or(kr.default_key_id(), |k| k.id)
        };
        self.policy
            .authorize_key(caller, key, (access, op), paths, grant)
    }

    /// The key new entries in directory `parent` get: the nearest assigned
    /// ancestor's (`ctl key assign`), else the default key. Without any
    /// assignment this is one read of the keyring.
    pub(in crate::fs) fn key_for_new_entry(&self, parent: &Arc<Inode>) -> FsResult<u32> {
        {
            let kr = self.vol.keyring().read();
            if kr.assignments().is_empty() {
                return Ok(kr.default_key_id());
            }
        }
        let mut chain = Vec::new();
        let mut cur = Some(parent.clone());
        while let Some(i) = cur {
            chain.push(self.dir_of(&i)?.id);
            cur = i.loc.lock().parent.clone();
        }
        chain.reverse();
        Ok(self.vol.key_for_chain(&chain))
    }

    /// The master key version of the entry `name` of directory `parent`
    /// (which may not have an inode yet), for an audit record: a file's
    /// from its header, a directory's from its record; a symlink or
    /// special file has no record of its own, the root directory's key
    /// seals it.
    pub(in crate::fs) fn key_version_at(&self, parent: &Arc<Inode>, name: &OsStr) -> Option<u32> {
        let pdir = self.dir_of(parent).ok()?;
        let entry = Self::backing_name(&pdir, name).ok()?.entry;
        self.vol
            .entry_key_version(parent.dir_fd().ok()?, OsStr::new(&entry))
            .or_else(|| self.root_dir().ok().map(|d| self.vol.dir_key_version(&d)))
    }

    pub(in crate::fs) fn check_writable(&self) -> FsResult<()> {
        if self.vol.read_only() {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// [`AccessControl::authorize`](crate::policy::AccessControl::authorize) for the entry `name` in directory `parent`.
    pub(in crate::fs) fn authorize_child(
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
    pub(in crate::fs) fn audit_paths(&self) -> bool {
        self.policy.audited()
    }

    /// Records the opening of a file's data key (fail-closed: Err refuses the open).
    pub(in crate::fs) fn record_open(
        &self,
        caller: Caller,
        inode: &Inode,
        op: &str,
        key_version: u32,
        grant: &mut Option<Arc<LiveGrant>>,
    ) -> FsResult<()> {
        self.check_key_use(caller, key_version, op != "decrypt", &mut || {
            Self::path_of(inode)
        })?;
        let gop = if op == "decrypt" {
            GrantOp::Read
        } else {
            GrantOp::Write
        };
        self.authorize_key_use(
            caller,
            key_version,
            (Access::Op(gop), op),
            || Self::paths_of(inode),
            grant,
        )?;
        let grant = grant.as_deref();
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

    /// Gives a new entry to the requesting user (when the daemon runs as
    /// root for other users with allow_other).
    ///
    /// In a set-group-ID parent the entry keeps the group the backing
    /// filesystem gave it (the parent's), as on ext4.
    pub(in crate::fs) fn chown_new(&self, parent: &Inode, entry: &str, req: &Request) {
        if self.new_entry_needs_owner(req) {
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

    /// Whether a new entry must be given to the requester: the daemon runs
    /// as root (so it made the entry root's) and the requester is not.
    pub(in crate::fs) fn new_entry_needs_owner(&self, req: &Request) -> bool {
        self.daemon_is_root && (req.uid() != 0 || req.gid() != 0)
    }

    /// Gives a new entry exactly the permission bits the caller asked for
    /// (see [`namespace::set_new_mode`]). Call after [`Self::chown_new`],
    /// since a chown clears set-ID bits.
    pub(in crate::fs) fn set_new_mode(
        dir: std::os::fd::BorrowedFd<'_>,
        entry: &OsStr,
        mode: u32,
    ) -> FsResult<()> {
        namespace::set_new_mode(dir, entry, mode).map_err(io_errno)
    }
}

/// GETATTR of any node.
pub(in crate::fs) fn getattr(fs: &SealFs, req: &Request, ino: INodeNo, reply: ReplyAttr) {
    let r = fs.inode(ino).and_then(|i| {
        fs.policy.authorize_any(
            Caller::of(req),
            || SealFs::paths_of(&i),
            Access::Lookup,
            "getattr",
        )?;
        fs.stat_inode(&i)
    });
    match r {
        Ok(a) => reply.attr(&fs.ttl(), &a),
        Err(e) => reply.error(e),
    }
}

/// The changes a SETATTR asks for (what sealfs honours of them).
pub(in crate::fs) struct SetAttr {
    pub(in crate::fs) mode: Option<u32>,
    pub(in crate::fs) uid: Option<u32>,
    pub(in crate::fs) gid: Option<u32>,
    pub(in crate::fs) size: Option<u64>,
    pub(in crate::fs) atime: Option<TimeOrNow>,
    pub(in crate::fs) mtime: Option<TimeOrNow>,
    /// The handle the change came through, if any.
    pub(in crate::fs) fh: Option<FileHandle>,
}

/// SETATTR: mode, owner, size and times, each as asked.
pub(in crate::fs) fn setattr(
    fs: &SealFs,
    req: &Request,
    ino: INodeNo,
    set: SetAttr,
    reply: ReplyAttr,
) {
    let SetAttr {
        mode,
        uid,
        gid,
        size,
        atime,
        mtime,
        fh,
    } = set;
    let r = (|| {
        fs.check_writable()?;
        let inode = fs.inode(ino)?;
        let mut grant = fs.policy.authorize_any(
            Caller::of(req),
            || SealFs::paths_of(&inode),
            Access::Op(GrantOp::Write),
            "setattr",
        )?;
        if inode.ino == ROOT {
            // The root's mode and owner are its own, not the cipher dir's.
            if mode.is_some() || uid.is_some() || gid.is_some() {
                fs.change_root_attrs(&inode, mode, uid, gid)?;
            }
        } else {
            if let Some(m) = mode {
                if inode.kind != EntryKind::Symlink {
                    fs.with_backing(&inode, |d, n| backing::set_mode(d, n, m & 0o7777))?;
                    // An access ACL follows the new bits (FUSE_POSIX_ACL).
                    fs.chmod_acl(req, &inode, m)?;
                }
            }
            if uid.is_some() || gid.is_some() {
                fs.with_backing(&inode, |d, n| backing::set_owner(d, n, uid, gid))?;
                fs.kill_caps(req, &inode);
            }
        }
        if size.is_some() && fs.xattrs_on() && inode.kind == EntryKind::File {
            // FUSE_HANDLE_KILLPRIV_V2: a truncate by a caller without
            // CAP_FSETID (taken as: not root) clears set-ID bits; any
            // truncate clears a file capability, as on ext4.
            if req.uid() != 0 {
                fs.kill_suid_sgid(&inode);
            }
            fs.kill_caps(req, &inode);
        }
        if let Some(sz) = size {
            if inode.kind != EntryKind::File {
                return Err(Errno::EISDIR);
            }
            match fh.map(|h| fs.content_of(req, h)) {
                Some(Ok(c)) => fs
                    .change_content(&c, |sf| sf.set_len(sz))
                    .map_err(|e| errno_of(&e))?,
                _ => {
                    let c = fs.open_content(&inode)?;
                    let version = c.read().key_version();
                    if let Err(e) =
                        fs.record_open(Caller::of(req), &inode, "encrypt", version, &mut grant)
                    {
                        SealFs::close_content(&inode);
                        return Err(e);
                    }
                    let r = fs
                        .change_content(&c, |sf| sf.set_len(sz))
                        .map_err(|e| errno_of(&e));
                    SealFs::close_content(&inode);
                    r?;
                }
            }
        }
        // Each time as asked: UTIME_OMIT (None) leaves it alone, UTIME_NOW
        // takes the current time. The kernel's own ctime (writeback cache)
        // cannot be set on the backing file; setting the times makes the
        // backing ctime "now", which is what the kernel sent.
        if atime.is_some() || mtime.is_some() {
            let (a, m) = (time_spec(atime), time_spec(mtime));
            fs.with_backing(&inode, |d, n| backing::set_times(d, n, a, m))?;
        }
        fs.stat_inode(&inode)
    })();
    match r {
        Ok(a) => reply.attr(&fs.ttl(), &a),
        Err(e) => reply.error(e),
    }
}

/// READLINK: the symlink's target, opened under the root directory's key.
pub(in crate::fs) fn readlink(fs: &SealFs, req: &Request, ino: INodeNo, reply: ReplyData) {
    let r = fs.inode(ino).and_then(|i| {
        fs.policy.authorize_any(
            Caller::of(req),
            || SealFs::paths_of(&i),
            Access::Op(GrantOp::Read),
            "readlink",
        )?;
        fs.symlink_target(&i)
    });
    match r {
        Ok(t) => reply.data(&t),
        Err(e) => reply.error(e),
    }
}

/// STATFS of the backing filesystem (after freed files are closed).
pub(in crate::fs) fn statfs(fs: &SealFs, reply: ReplyStatfs) {
    // Space of just-deleted files counts as free once they are closed.
    fs.reclaim.drain();
    let root = fs.inodes.read().nodes.get(&ROOT).cloned();
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
