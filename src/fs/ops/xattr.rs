//! Requests on extended attributes (getxattr, listxattr, setxattr,
//! removexattr) and what POSIX ACLs ask of the daemon once the kernel
//! enforces them (FUSE_POSIX_ACL): the mode an access ACL stands for, the
//! ACL a chmod rewrites, the ACL a new entry inherits from its directory's
//! default ACL. Also the set-ID and capability removal the daemon owes the
//! kernel for FUSE_HANDLE_KILLPRIV_V2 (which spares a `security.capability`
//! round trip per write).
//!
//! Values live encrypted on the backing objects (`volume::xattrs`); each
//! inode caches its attribute keys and whether it has any attribute at all,
//! so the kernel's `security.capability` and ACL probes of a file without
//! attributes cost no key, no header read and, after the first, no system
//! call (this mount is the only writer of its cipher directory).
//!
//! Owns: translating xattr requests, the per-inode attribute cache, ACL
//! inheritance and the mode/ACL coupling.
//! Must never: store an attribute unencrypted, or log names or values.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::{Errno, INodeNo, ReplyEmpty, ReplyXattr, Request};

use crate::format::acl::Acl;
use crate::format::grants::{Access, GrantOp};
use crate::format::header::EncryptionContext;
use crate::format::xattrs::{check_name, XattrCipher, ACL_ACCESS, ACL_DEFAULT, CAPABILITY};
use crate::policy::{Caller, Event};
use crate::volume::backing::{self, TimeSpec};
use crate::volume::xattrs::{has_sealed, keyless_node_id, Attrs};
use crate::volume::{EntryKind, VolumeError};

use crate::fs::inodes::Inode;
use crate::fs::{errno_of, FsResult, SealFs};

/// What this mount knows of one inode's attributes.
#[derive(Default)]
pub(in crate::fs) struct XattrState {
    /// The attribute keys, once needed, and of a file the master key
    /// version of its header (a directory's is looked up per request: a
    /// rewrap may move it).
    cipher: Option<(Arc<XattrCipher>, Option<u32>)>,
    /// `Some(true)`: the object has no attribute at all.
    empty: Option<bool>,
    /// Of a directory: its default ACL, once read (inner None: none).
    default_acl: Option<Option<Acl>>,
    /// `Some(true)`: a file capability is set (a write must remove it).
    caps: Option<bool>,
}

/// What an attribute request does with the entry's key, decided like a
/// read or a write of the entry (its key enabled, its key policy's
/// `use:read` or `use:write`). Reading an ACL is part of the kernel's
/// permission checks (as for grants, a lookup), and reading
/// `security.capability` part of every write (the kernel asks before it
/// clears set-ID bits and capabilities): both need the key enabled, not a
/// `use:` permission, so that a caller who may write but not read can
/// write. (A file's capability is readable by anyone who can reach the
/// file on ext4 too: `getcap`.)
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyUse {
    Read,
    AclRead,
    Write,
}

impl KeyUse {
    fn of_read(name: &[u8]) -> KeyUse {
        if name == ACL_ACCESS || name == ACL_DEFAULT || name == CAPABILITY {
            KeyUse::AclRead
        } else {
            KeyUse::Read
        }
    }
}

/// What a new entry inherits from its directory (posix_acl_create).
#[derive(Default)]
pub(in crate::fs) struct Inherited {
    access: Option<Acl>,
    default: Option<Acl>,
}

fn vol_errno(e: VolumeError) -> Errno {
    errno_of(&e)
}

impl SealFs {
    /// Whether this mount serves extended attributes and ACLs (the volume
    /// has the `xattrs` feature and the backing filesystem stores them).
    pub(in crate::fs) fn xattrs_on(&self) -> bool {
        self.features.xattrs
    }

    /// Runs `f` on the inode's attribute state.
    fn xstate<T>(inode: &Inode, f: impl FnOnce(&mut XattrState) -> T) -> T {
        f(&mut inode.xattrs.lock())
    }

    /// Whether the object has no attribute at all (one listxattr the first
    /// time, then known).
    fn has_no_xattrs(&self, inode: &Inode) -> FsResult<bool> {
        if let Some(e) = Self::xstate(inode, |s| s.empty) {
            return Ok(e);
        }
        let empty = !self.with_backing(inode, has_sealed)?;
        Self::xstate(inode, |s| s.empty = Some(empty));
        Ok(empty)
    }

    /// For an object with no attribute, before answering "none": the
    /// caller must be one its key would let use them (`key_use`), as
    /// [`SealFs::xattr_cipher`] decides for an object with some. Otherwise
    /// a caller refused by a key policy, or a grantee on another key,
    /// could tell which entries have attributes (EACCES) from which have
    /// none (ENODATA). The owner with no key policy anywhere is never
    /// refused here (one atomic load); others cost a read of the entry's
    /// header record (no unwrap) unless its attribute keys are cached.
    fn check_bare_xattr_use(
        &self,
        req: &Request,
        inode: &Arc<Inode>,
        key_use: KeyUse,
    ) -> FsResult<()> {
        if key_use == KeyUse::AclRead
            || (!self.vol.has_key_policies() && self.policy.is_owner(req.uid()))
        {
            return Ok(());
        }
        let cached = Self::xstate(inode, |s| s.cipher.as_ref().and_then(|(_, v)| *v));
        let version = match (inode.kind, cached) {
            (_, Some(v)) => Some(v),
            (EntryKind::File, None) => Some(
                self.with_backing(inode, |dir, entry| {
                    Ok(self.vol.entry_key_version(dir, entry))
                })?
                .ok_or(Errno::EIO)?,
            ),
            _ => self.keyless_xattr_key_version(inode)?,
        };
        match version {
            Some(v) => self.check_xattr_key(req, inode, v, key_use),
            None => Ok(()),
        }
    }

    /// The key version deciding the attributes of an object that is not a
    /// file: a directory's record's (looked up each time: a rewrap may
    /// move it); None for a symlink or special file, sealed by the root
    /// directory's key, which needs only to be enabled (as `readlink`).
    fn keyless_xattr_key_version(&self, inode: &Arc<Inode>) -> FsResult<Option<u32>> {
        if inode.kind == EntryKind::Dir {
            return Ok(Some(self.vol.dir_key_version(&*self.dir_of(inode)?)));
        }
        self.root_dir()?;
        Ok(None)
    }

    /// Decides `key_use` of the attributes of `inode` by its entry's key
    /// `version`: enabled, then (but for reads of the kernel's permission
    /// checks) the key policy and a grantee's grant on that key.
    fn check_xattr_key(
        &self,
        req: &Request,
        inode: &Inode,
        version: u32,
        key_use: KeyUse,
    ) -> FsResult<()> {
        self.check_key_version(version)?;
        if key_use == KeyUse::AclRead {
            return Ok(());
        }
        self.check_key_use(
            Caller::of(req),
            version,
            key_use == KeyUse::Write,
            &mut || Self::path_of(inode),
        )?;
        self.check_xattr_grant_key(req, inode, version, key_use)
    }

    /// Marks a new object as having no attribute (nothing to look up).
    pub(in crate::fs) fn new_without_xattrs(inode: &Inode) {
        Self::xstate(inode, |s| {
            if s.empty.is_none() {
                s.empty = Some(true);
                s.caps = Some(false);
                s.default_acl = Some(None);
            }
        });
    }

    /// The attribute keys of `inode` (a file's come from its data key: its
    /// header is opened once, and that use of the key is recorded). A
    /// keyless node's are bound to its id (`keyless-xattr-ids`), which
    /// `for_set` makes if it has none yet; without one and not `for_set`,
    /// keys under which nothing opens (not kept: the id may come).
    ///
    /// Every call, cached or not, decides `key_use` by the entry's key
    /// ([`KeyUse`]): a file's or directory's attributes are refused as
    /// its content would be. A symlink's or special file's are sealed
    /// by the root directory's key and, like `readlink`, need it enabled
    /// only.
    fn xattr_cipher(
        &self,
        req: &Request,
        inode: &Arc<Inode>,
        key_use: KeyUse,
        for_set: bool,
    ) -> FsResult<Arc<XattrCipher>> {
        let (cipher, file_version) = match Self::xstate(inode, |s| s.cipher.clone()) {
            Some(c) => c,
            None => {
                let (cipher, file_version) =
                    self.load_xattr_cipher(req, inode, key_use, for_set)?;
                if file_version.is_some() {
                    // Decided by the load, before it recorded the key's use.
                    return Ok(cipher);
                }
                (cipher, None)
            }
        };
        let version = match file_version {
            Some(v) => Some(v),
            None => self.keyless_xattr_key_version(inode)?,
        };
        if let Some(v) = version {
            self.check_xattr_key(req, inode, v, key_use)?;
        }
        Ok(cipher)
    }

    /// A grantee's attribute request must go through a grant on the
    /// entry's key (as its content would).
    fn check_xattr_grant_key(
        &self,
        req: &Request,
        inode: &Inode,
        version: u32,
        key_use: KeyUse,
    ) -> FsResult<()> {
        let access = if key_use == KeyUse::Write {
            (Access::Op(GrantOp::Write), "setxattr")
        } else {
            (Access::Op(GrantOp::Read), "getxattr")
        };
        self.authorize_key_use(
            Caller::of(req),
            version,
            access,
            || Self::paths_of(inode),
            &mut None,
        )
    }

    /// The attribute keys of `inode`, made once and cached with its
    /// file's key version (see [`SealFs::xattr_cipher`]).
    fn load_xattr_cipher(
        &self,
        req: &Request,
        inode: &Arc<Inode>,
        key_use: KeyUse,
        for_set: bool,
    ) -> FsResult<(Arc<XattrCipher>, Option<u32>)> {
        self.check_enabled()?;
        let mut file_version = None;
        let cipher = match inode.kind {
            EntryKind::Dir => self.dir_of(inode)?.xattr_cipher(),
            EntryKind::Symlink | EntryKind::Other if self.features.keyless_ids => {
                let root = self.root_dir()?;
                let id = self.with_backing(inode, |d, e| keyless_node_id(d, e, for_set))?;
                match id {
                    Some(id) => root.node_xattr_cipher(id),
                    None => return Ok((Arc::new(root.node_xattr_cipher([0; 16])), None)),
                }
            }
            EntryKind::Symlink | EntryKind::Other => self.root_dir()?.keyless_xattr_cipher(),
            EntryKind::File => {
                let _ns = self.vol.namespace().read_recursive();
                let (pdir, name) = self.parent_and_name(inode)?;
                let file = self.with_backing(inode, |d, n| backing::open_file(d, n, false))?;
                let ctx = EncryptionContext {
                    parent_dir_id: pdir.id,
                    name: &name,
                };
                let h = self.vol.open_header(&file, &ctx).map_err(|e| {
                    tracing::warn!(ino = inode.ino, "cannot open file for its attributes: {e}");
                    if e.is_integrity() {
                        self.record_integrity_of(req, inode, &e);
                    }
                    errno_of(&e)
                })?;
                let version = h.rec.slots[h.slot].map_or(0, |s| s.key_version);
                file_version = Some(version);
                // The policy decides before the use of the key is recorded.
                self.check_xattr_key(req, inode, version, key_use)?;
                if self.audit_paths() {
                    let path = Self::path_of(inode);
                    self.policy.record(
                        Caller::of(req),
                        Event {
                            key_version: Some(version),
                            detail: Some("extended attributes".into()),
                            ..Event::ok("decrypt", Some(&path))
                        },
                    )?;
                }
                XattrCipher::new(&h.key, h.rec.id, crate::format::xattrs::Owner::File)
            }
        };
        let c = (Arc::new(cipher), file_version);
        Self::xstate(inode, |s| s.cipher = Some(c.clone()));
        Ok(c)
    }

    /// Records an integrity failure met on `inode` outside an open handle.
    fn record_integrity_of(&self, req: &Request, inode: &Inode, e: &VolumeError) {
        if !self.audit_paths() {
            return;
        }
        let path = Self::path_of(inode);
        let _ = self.policy.record(
            Caller::of(req),
            Event {
                outcome: "error",
                error: Some(e.to_string()),
                ..Event::ok("integrity_failure", Some(&path))
            },
        );
    }

    /// The value of attribute `name` of `inode`, if set.
    fn get_attr(
        &self,
        req: &Request,
        inode: &Arc<Inode>,
        name: &[u8],
    ) -> FsResult<Option<Vec<u8>>> {
        if self.has_no_xattrs(inode)? {
            self.check_bare_xattr_use(req, inode, KeyUse::of_read(name))?;
            return Ok(None);
        }
        let cipher = self.xattr_cipher(req, inode, KeyUse::of_read(name), false)?;
        let r = self.with_backing(inode, |dir, entry| {
            Attrs {
                dir,
                entry,
                cipher: &cipher,
            }
            .get(name)
            .map_err(std::io::Error::other_volume)
        });
        r.map_err(|e| self.attr_failure(req, inode, e))
    }

    /// Sets (or with `value` None removes) attribute `name` of `inode`.
    fn put_attr(
        &self,
        req: &Request,
        inode: &Arc<Inode>,
        name: &[u8],
        value: Option<&[u8]>,
        flags: i32,
    ) -> FsResult<()> {
        if value.is_none() && self.has_no_xattrs(inode)? {
            self.check_bare_xattr_use(req, inode, KeyUse::Write)?;
            return Err(Errno::NO_XATTR);
        }
        let cipher = self.xattr_cipher(req, inode, KeyUse::Write, value.is_some())?;
        let r = self.with_backing(inode, |dir, entry| {
            let a = Attrs {
                dir,
                entry,
                cipher: &cipher,
            };
            match value {
                Some(v) => a.set(name, v, flags),
                None => a.remove(name),
            }
            .map_err(std::io::Error::other_volume)
        });
        r.map_err(|e| self.attr_failure(req, inode, e))?;
        Self::xstate(inode, |s| {
            s.empty = if value.is_some() { Some(false) } else { None };
            if name == CAPABILITY {
                s.caps = Some(value.is_some());
            }
            if name == ACL_DEFAULT {
                s.default_acl = None;
            }
        });
        Ok(())
    }

    /// The errno of a failed attribute call (an integrity failure is
    /// recorded).
    fn attr_failure(&self, req: &Request, inode: &Inode, e: Errno) -> Errno {
        if e == Errno::EIO {
            self.record_integrity_of(
                req,
                inode,
                &VolumeError::Xattr(crate::format::xattrs::XattrError::Tampered),
            );
        }
        e
    }

    /// The access check of an attribute request: reading an ACL is part of
    /// a permission check (lookup access), any other read needs read
    /// access, a change needs write access.
    fn authorize_xattr(
        &self,
        req: &Request,
        inode: &Inode,
        name: Option<&[u8]>,
        write: bool,
    ) -> FsResult<()> {
        let access = if write {
            Access::Op(GrantOp::Write)
        } else if matches!(name, Some(n) if n == ACL_ACCESS || n == ACL_DEFAULT) {
            Access::Lookup
        } else {
            Access::Op(GrantOp::Read)
        };
        let op = if write { "setxattr" } else { "getxattr" };
        self.policy
            .authorize_any(Caller::of(req), || Self::paths_of(inode), access, op)?;
        Ok(())
    }

    // ------------------------------------------------------------ ACLs

    /// The default ACL of directory `dir` (cached).
    fn default_acl(&self, req: &Request, dir: &Arc<Inode>) -> FsResult<Option<Acl>> {
        if let Some(d) = Self::xstate(dir, |s| s.default_acl.clone()) {
            return Ok(d);
        }
        let acl = match self.get_attr(req, dir, ACL_DEFAULT)? {
            Some(v) => Some(Acl::parse(&v).map_err(|_| Errno::EIO)?),
            None => None,
        };
        Self::xstate(dir, |s| s.default_acl = Some(acl.clone()));
        Ok(acl)
    }

    /// The mode of a new entry of `parent` asked for with `mode` and
    /// `umask`, and the ACLs it inherits: the umask applies only when the
    /// directory has no default ACL (as on ext4).
    pub(in crate::fs) fn creation_mode(
        &self,
        req: &Request,
        parent: INodeNo,
        mode: u32,
        umask: u32,
        is_dir: bool,
    ) -> FsResult<(u32, Inherited)> {
        if !self.xattrs_on() {
            return Ok((mode & !umask, Inherited::default()));
        }
        let p = self.inode(parent)?;
        let Some(def) = self.default_acl(req, &p)? else {
            return Ok((mode & !umask, Inherited::default()));
        };
        let (access, mode) = def.inherit(mode);
        Ok((
            mode,
            Inherited {
                access,
                default: is_dir.then_some(def),
            },
        ))
    }

    /// Stores what a new entry inherited (before the kernel sees it).
    pub(in crate::fs) fn apply_inherited(
        &self,
        req: &Request,
        inode: &Arc<Inode>,
        inherited: Inherited,
    ) -> FsResult<()> {
        Self::new_without_xattrs(inode);
        if let Some(a) = &inherited.access {
            self.put_attr(req, inode, ACL_ACCESS, Some(&a.encode()), 0)?;
        }
        if let Some(d) = &inherited.default {
            self.put_attr(req, inode, ACL_DEFAULT, Some(&d.encode()), 0)?;
            Self::xstate(inode, |s| s.default_acl = Some(Some(d.clone())));
        }
        Ok(())
    }

    /// After a chmod to `mode`: an access ACL's owner, mask (or group) and
    /// other entries follow the new bits (posix_acl_chmod).
    pub(in crate::fs) fn chmod_acl(
        &self,
        req: &Request,
        inode: &Arc<Inode>,
        mode: u32,
    ) -> FsResult<()> {
        if !self.xattrs_on() || inode.kind == EntryKind::Symlink {
            return Ok(());
        }
        let Some(v) = self.get_attr(req, inode, ACL_ACCESS)? else {
            return Ok(());
        };
        let mut acl = Acl::parse(&v).map_err(|_| Errno::EIO)?;
        acl.chmod(mode);
        self.put_attr(req, inode, ACL_ACCESS, Some(&acl.encode()), 0)
    }

    /// Setting an access ACL: its mode bits become the file's (an ACL the
    /// bits say all of is not stored), and the set-group-ID bit goes unless
    /// the caller is in the file's group or root (the kernel leaves both to
    /// the filesystem).
    fn set_access_acl(
        &self,
        req: &Request,
        inode: &Arc<Inode>,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        let acl = Acl::parse(value).map_err(|_| Errno::EINVAL)?;
        let st = self.with_backing(inode, backing::stat)?;
        let mut mode = acl.mode(st.st_mode);
        if mode & libc::S_ISGID != 0 && req.uid() != 0 && !self.in_group(req, st.st_gid) {
            mode &= !libc::S_ISGID;
        }
        if acl.is_minimal() {
            match self.put_attr(req, inode, ACL_ACCESS, None, 0) {
                Err(e) if e == Errno::NO_XATTR => {}
                other => other?,
            }
        } else {
            self.put_attr(req, inode, ACL_ACCESS, Some(value), flags)?;
        }
        if mode & 0o7777 != st.st_mode & 0o7777 {
            self.with_backing(inode, |d, n| backing::set_mode(d, n, mode & 0o7777))?;
        }
        Ok(())
    }

    fn in_group(&self, req: &Request, gid: u32) -> bool {
        req.gid() == gid || crate::policy::read_groups(req.pid()).contains(&gid)
    }

    // ------------------------------------------------------------ killpriv

    /// A write from a caller without CAP_FSETID to `inode` (the kernel's
    /// FUSE_WRITE_KILL_SUIDGID): set-user-ID goes, set-group-ID too when
    /// group-executable, as the VFS does on a local filesystem.
    pub(in crate::fs) fn kill_suid_sgid(&self, inode: &Inode) {
        let r = self.with_backing(inode, |d, n| {
            let st = backing::stat(d, n)?;
            let mut m = st.st_mode & 0o7777;
            m &= !libc::S_ISUID;
            if m & libc::S_IXGRP != 0 {
                m &= !libc::S_ISGID;
            }
            if m != st.st_mode & 0o7777 {
                backing::set_mode(d, n, m)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!(ino = inode.ino, "set-ID bits not cleared: {e:?}");
        }
    }

    /// A write, truncate or chown removes a file capability (as on ext4).
    /// Known cheaply: the kernel asks for it after every attribute refresh.
    pub(in crate::fs) fn kill_caps(&self, req: &Request, inode: &Arc<Inode>) {
        if !self.xattrs_on() || inode.kind != EntryKind::File {
            return;
        }
        let known = Self::xstate(inode, |s| s.caps.or(s.empty.filter(|e| *e).map(|_| false)));
        if known == Some(false) {
            return;
        }
        match self.put_attr(req, inode, CAPABILITY, None, 0) {
            Ok(()) => {}
            Err(e) if e == Errno::NO_XATTR => Self::xstate(inode, |s| s.caps = Some(false)),
            Err(e) => tracing::warn!(ino = inode.ino, "file capability not removed: {e:?}"),
        }
    }

    // ------------------------------------------------------------ atime

    /// Notes an open of a file: its first read may update the atime.
    pub(in crate::fs) fn note_open(inode: &Inode) {
        inode.atime_due.store(true, Ordering::Relaxed);
    }

    /// The first read of a file after an open updates its atime the way
    /// `relatime` does on ext4 (when it is not newer than the mtime or
    /// ctime, or a day old). The daemon's own reads never touch it
    /// (backing files are opened `O_NOATIME`).
    pub(in crate::fs) fn note_read(&self, inode: &Inode) {
        if !inode.atime_due.swap(false, Ordering::Relaxed) {
            return;
        }
        let r = self.with_backing(inode, |d, n| {
            let st = backing::stat(d, n)?;
            let a = (st.st_atime, st.st_atime_nsec);
            let due = a <= (st.st_mtime, st.st_mtime_nsec)
                || a <= (st.st_ctime, st.st_ctime_nsec)
                || crate::sys::now_secs() as i64 - st.st_atime >= 24 * 3600;
            if due {
                backing::set_times(d, n, TimeSpec::Now, TimeSpec::Omit)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::debug!(ino = inode.ino, "atime not updated: {e:?}");
        }
    }
}

/// Helper to carry a volume error through `with_backing`'s io::Error.
trait OtherVolume {
    fn other_volume(e: VolumeError) -> std::io::Error;
}

impl OtherVolume for std::io::Error {
    fn other_volume(e: VolumeError) -> std::io::Error {
        match e {
            VolumeError::Io(e) => e,
            e => std::io::Error::from_raw_os_error(e.errno()),
        }
    }
}

fn check(name: &OsStr) -> FsResult<&[u8]> {
    let n = name.as_bytes();
    check_name(n).map_err(|e| vol_errno(e.into()))?;
    Ok(n)
}

/// Replies with `value` (or its size when `size` is 0; ERANGE if it does
/// not fit).
fn reply_value(value: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}

/// GETXATTR.
pub(in crate::fs) fn getxattr(
    fs: &SealFs,
    req: &Request,
    ino: INodeNo,
    name: &OsStr,
    size: u32,
    reply: ReplyXattr,
) {
    let r = (|| {
        let n = check(name)?;
        let inode = fs.inode(ino)?;
        fs.authorize_xattr(req, &inode, Some(n), false)?;
        let v = fs.get_attr(req, &inode, n)?;
        if n == CAPABILITY {
            SealFs::xstate(&inode, |s| s.caps = Some(v.is_some()));
        }
        v.ok_or(Errno::NO_XATTR)
    })();
    match r {
        Ok(v) => reply_value(&v, size, reply),
        Err(e) => reply.error(e),
    }
}

/// LISTXATTR: `trusted.*` names only for root (as ext4 lists them only to
/// CAP_SYS_ADMIN).
pub(in crate::fs) fn listxattr(
    fs: &SealFs,
    req: &Request,
    ino: INodeNo,
    size: u32,
    reply: ReplyXattr,
) {
    let r = (|| {
        let inode = fs.inode(ino)?;
        fs.authorize_xattr(req, &inode, None, false)?;
        if fs.has_no_xattrs(&inode)? {
            fs.check_bare_xattr_use(req, &inode, KeyUse::Read)?;
            return Ok(Vec::new());
        }
        let cipher = fs.xattr_cipher(req, &inode, KeyUse::Read, false)?;
        let names = fs
            .with_backing(&inode, |dir, entry| {
                Attrs {
                    dir,
                    entry,
                    cipher: &cipher,
                }
                .list()
                .map_err(std::io::Error::other_volume)
            })
            .map_err(|e| fs.attr_failure(req, &inode, e))?;
        let mut out = Vec::new();
        for n in names {
            if n.starts_with(b"trusted.") && req.uid() != 0 {
                continue;
            }
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    })();
    match r {
        Ok(v) => reply_value(&v, size, reply),
        Err(e) => reply.error(e),
    }
}

/// SETXATTR (`flags`: XATTR_CREATE, XATTR_REPLACE).
pub(in crate::fs) fn setxattr(
    fs: &SealFs,
    req: &Request,
    ino: INodeNo,
    name: &OsStr,
    value: &[u8],
    flags: i32,
    reply: ReplyEmpty,
) {
    let r = (|| {
        fs.check_writable()?;
        let n = check(name)?;
        let inode = fs.inode(ino)?;
        fs.authorize_xattr(req, &inode, Some(n), true)?;
        if n == ACL_ACCESS {
            return fs.set_access_acl(req, &inode, value, flags);
        }
        if n == ACL_DEFAULT {
            if inode.kind != EntryKind::Dir {
                return Err(Errno::EACCES);
            }
            Acl::parse(value).map_err(|_| Errno::EINVAL)?;
        }
        fs.put_attr(req, &inode, n, Some(value), flags)
    })();
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// REMOVEXATTR.
pub(in crate::fs) fn removexattr(
    fs: &SealFs,
    req: &Request,
    ino: INodeNo,
    name: &OsStr,
    reply: ReplyEmpty,
) {
    let r = (|| {
        fs.check_writable()?;
        let n = check(name)?;
        let inode = fs.inode(ino)?;
        fs.authorize_xattr(req, &inode, Some(n), true)?;
        fs.put_attr(req, &inode, n, None, 0)
    })();
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}
