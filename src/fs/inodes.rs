//! The inode table: one [`Inode`] per object the kernel knows, with its
//! parent and plaintext name (which form its encryption context). A
//! directory holds an `O_PATH` fd, the anchor of every `*at` call below it;
//! any other object is reached as (parent's fd, backing entry), so the
//! daemon's open files grow with the number of cached directories, not
//! files. Lookups add to the table, forgets take from it; unlinks and
//! replacing renames unlink a node from its backing inode at once.
//!
//! Owns: node ids, the node ↔ backing inode mapping, the plaintext path
//! and the unlocked directory of an inode.
//! Must never: change a backing name (that is `volume::namespace`), or log
//! plaintext names (inode numbers only).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use fuser::{Errno, INodeNo};
use parking_lot::{Mutex, RwLock};

use crate::format::header::EncryptionContext;
use crate::format::names::{BackingName, MAX_NAME};
use crate::volume::backing;
use crate::volume::content::SealedFile;
use crate::volume::{Directory, EntryKind};

use crate::fs::listing::CachedListing;
use crate::fs::ops::xattr::XattrState;
use crate::fs::{errno_of, io_errno, FsResult, SealFs, ROOT};

pub(super) struct Location {
    pub(super) parent: Option<Arc<Inode>>,
    /// Plaintext name (with the parent's id, the encryption context).
    pub(super) name: Vec<u8>,
    /// Backing entry name in the parent's backing directory.
    pub(super) entry: String,
    /// The name was removed (unlink, or replaced by a rename) while the
    /// kernel still knows the node: `entry` may name another object by now,
    /// so the node is reached only through its open backing fd, if any.
    pub(super) unlinked: bool,
    /// Of a file with several names (hard links): the other names this
    /// mount has seen it under (see `fs::links`).
    pub(super) others: Vec<OtherName>,
    /// The name above was removed but the file has other names this mount
    /// has not seen: a request that needs a name answers ESTALE, and the
    /// kernel looks the path up again.
    pub(super) lost: bool,
}

/// Another name of a file with several.
#[derive(Clone)]
pub(super) struct OtherName {
    pub(super) parent: Arc<Inode>,
    pub(super) name: Vec<u8>,
    pub(super) entry: String,
}

impl Location {
    /// The location `name` (backing `entry`) in `parent`.
    pub(super) fn at(parent: Option<Arc<Inode>>, name: &[u8], entry: &str) -> Location {
        Location {
            parent,
            name: name.to_vec(),
            entry: entry.to_string(),
            unlinked: false,
            others: Vec::new(),
            lost: false,
        }
    }
}

pub(super) struct OpenState {
    pub(super) count: usize,
    pub(super) file: Option<Arc<RwLock<SealedFile>>>,
}

/// One object the kernel knows. Directories hold an `O_PATH` fd (the anchor
/// of every `*at` call below them); other objects hold none and are reached
/// as (parent's fd, backing entry), so the daemon's open files grow with the
/// number of cached directories, not files.
pub(super) struct Inode {
    /// FUSE node id (the backing inode number unless that is taken).
    pub(super) ino: u64,
    pub(super) backing_ino: u64,
    pub(super) kind: EntryKind,
    pub(super) dir_fd: Option<OwnedFd>,
    pub(super) nlookup: AtomicU64,
    pub(super) loc: Mutex<Location>,
    pub(super) dir: RwLock<Option<Arc<Directory>>>,
    /// A directory whose record is written but not yet synced (see [`RecordFlusher`]).
    pub(super) record_pending: AtomicBool,
    pub(super) open: Mutex<OpenState>,
    /// Of a directory: bumped after every change of its entries made
    /// through this mount (see [`SealFs::dir_changed`]).
    pub(super) changes: AtomicU64,
    /// Of a directory: its decrypted listing while unchanged.
    pub(super) listing: Mutex<Option<CachedListing>>,
    /// Of a file: the kernel was told a size larger than the sealed one
    /// (`stat` counts a stray tail, docs/FORMAT.md §4.4). With the
    /// writeback cache the kernel keeps that size and zero-fills a short
    /// read, so while it knows this node its opens are direct I/O: reads
    /// end at the sealed size.
    pub(super) stale_size: AtomicBool,
    /// Its extended attributes' keys and what this mount knows of them.
    pub(super) xattrs: Mutex<XattrState>,
    /// Of a file: its atime may be due for an update at the next read
    /// (set at open; see `SealFs::note_read`).
    pub(super) atime_due: AtomicBool,
}

impl Inode {
    /// A node the kernel has looked up once.
    pub(super) fn new(
        ino: u64,
        backing_ino: u64,
        kind: EntryKind,
        dir_fd: Option<OwnedFd>,
        loc: Location,
        dir: Option<Arc<Directory>>,
    ) -> Inode {
        Inode {
            ino,
            backing_ino,
            kind,
            dir_fd,
            nlookup: AtomicU64::new(1),
            loc: Mutex::new(loc),
            dir: RwLock::new(dir),
            record_pending: AtomicBool::new(false),
            open: Mutex::new(OpenState {
                count: 0,
                file: None,
            }),
            changes: AtomicU64::new(0),
            listing: Mutex::new(None),
            stale_size: AtomicBool::new(false),
            xattrs: Mutex::new(XattrState::default()),
            atime_due: AtomicBool::new(false),
        }
    }

    /// A directory's `O_PATH` fd (`ENOTDIR` for anything else).
    pub(super) fn dir_fd(&self) -> FsResult<std::os::fd::BorrowedFd<'_>> {
        self.dir_fd
            .as_ref()
            .map(|f| f.as_fd())
            .ok_or(Errno::ENOTDIR)
    }
}

/// The node table: node id → inode, and backing inode → node id for the
/// objects still reachable by name. A backing inode freed by an unlink
/// through this mount leaves `by_backing` at once, so a recycled backing
/// number gets a fresh node id while the kernel may still hold the old one.
#[derive(Default)]
pub(super) struct Table {
    pub(super) nodes: HashMap<u64, Arc<Inode>>,
    pub(super) by_backing: HashMap<u64, u64>,
}

impl Table {
    /// A table holding only the root directory (backing inode
    /// `backing_ino`, open as `fd`, unlocked as `dir`).
    pub(super) fn with_root(fd: OwnedFd, backing_ino: u64, dir: Directory) -> Table {
        let loc = Location::at(None, b"", "");
        let root = Inode::new(
            ROOT,
            backing_ino,
            EntryKind::Dir,
            Some(fd),
            loc,
            Some(Arc::new(dir)),
        );
        let mut table = Table::default();
        table.nodes.insert(ROOT, Arc::new(root));
        table.by_backing.insert(backing_ino, ROOT);
        table
    }
}

impl SealFs {
    /// The node with id `ino` (`ESTALE` if the kernel's id is unknown).
    pub(super) fn inode(&self, ino: INodeNo) -> FsResult<Arc<Inode>> {
        self.inodes
            .read()
            .nodes
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    /// The plaintext path of `inode`: its encryption context as a path,
    /// canonical (no `..`, no symlinks: the kernel resolves those through
    /// lookups, each checked on its own).
    pub(super) fn path_of(inode: &Inode) -> Vec<u8> {
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
    pub(super) fn child_path(parent: &Inode, name: &[u8]) -> Vec<u8> {
        let mut p = Self::path_of(parent);
        if p != b"/" {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    /// The unlocked directory of a directory inode (loaded once, then cached).
    pub(super) fn dir_of(&self, inode: &Arc<Inode>) -> FsResult<Arc<Directory>> {
        self.check_enabled()?;
        if inode.kind != EntryKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if let Some(d) = inode.dir.read().as_ref() {
            self.check_key_version(self.vol.dir_key_version(d))?;
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

    /// The unlocked root directory, whose key also seals symlink targets.
    pub(super) fn root_dir(&self) -> FsResult<Arc<Directory>> {
        let root = self
            .inodes
            .read()
            .nodes
            .get(&ROOT)
            .cloned()
            .ok_or(Errno::EIO)?;
        self.dir_of(&root)
    }

    /// The unlocked parent directory and plaintext name of `inode`: its
    /// encryption context (`ENOENT` once its name is gone).
    pub(super) fn parent_and_name(&self, inode: &Inode) -> FsResult<(Arc<Directory>, Vec<u8>)> {
        let (parent, name) = {
            let l = inode.loc.lock();
            if l.unlinked {
                return Err(Errno::ENOENT);
            }
            if l.lost {
                return Err(Errno::ESTALE);
            }
            (l.parent.clone(), l.name.clone())
        };
        let parent = parent.ok_or(Errno::EIO)?;
        Ok((self.dir_of(&parent)?, name))
    }

    /// `name` encrypted under `dir`'s name key.
    pub(super) fn backing_name(dir: &Directory, name: &OsStr) -> FsResult<BackingName> {
        if name.len() > MAX_NAME {
            return Err(Errno::ENAMETOOLONG);
        }
        dir.names
            .encrypt_name(name.as_bytes())
            .map_err(|e| errno_of(&e.into()))
    }

    /// Runs `f` on the backing object of `inode`: a directory's own fd with
    /// an empty name, or the parent's fd and the entry name (under the
    /// namespace lock, so a concurrent rename cannot move it in between).
    pub(super) fn with_backing<T>(
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
            (l.parent.clone(), l.entry.clone(), l.unlinked || l.lost)
        };
        if unlinked {
            // An open file lives on through its fd (fstat, fchmod and
            // futimens on an open, unlinked file must work); anything else
            // is gone, and its old entry name may be another file's now
            // (ESTALE: another name of it exists, the kernel looks again).
            let gone = if inode.loc.lock().lost {
                Errno::ESTALE
            } else {
                Errno::ENOENT
            };
            let file = inode.open.lock().file.clone().ok_or(gone)?;
            let file = file.read();
            return f(file.backing().as_fd(), OsStr::new("")).map_err(io_errno);
        }
        let parent = parent.ok_or(Errno::EIO)?;
        f(parent.dir_fd()?, OsStr::new(&entry)).map_err(io_errno)
    }

    /// Finds or adds the inode for `entry` in `parent`, counting one lookup.
    pub(super) fn remember(
        &self,
        parent: &Arc<Inode>,
        name: &[u8],
        entry: &str,
    ) -> FsResult<(Arc<Inode>, libc::stat)> {
        let st = backing::stat(parent.dir_fd()?, OsStr::new(entry)).map_err(io_errno)?;
        self.remember_stat(parent, name, entry, st)
    }

    /// [`Self::remember`] with the entry's attributes `st` already taken
    /// by the caller (after its last change of the entry), so the request
    /// makes no `fstatat` of its own.
    pub(super) fn remember_stat(
        &self,
        parent: &Arc<Inode>,
        name: &[u8],
        entry: &str,
        st: libc::stat,
    ) -> FsResult<(Arc<Inode>, libc::stat)> {
        let pfd = parent.dir_fd()?;
        let kind = EntryKind::of_mode(st.st_mode);
        let reuse = |t: &Table| -> Option<Arc<Inode>> {
            let id = t.by_backing.get(&st.st_ino)?;
            let n = t.nodes.get(id)?;
            (n.kind == kind).then(|| n.clone())
        };
        let relink = |n: &Arc<Inode>| {
            n.nlookup.fetch_add(1, Ordering::Relaxed);
            Self::seen_as(n, parent, name, entry, st.st_nlink);
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
        let loc = Location::at(Some(parent.clone()), name, entry);
        let inode = Arc::new(Inode::new(ino, st.st_ino, kind, dir_fd, loc, None));
        table.nodes.insert(ino, inode.clone());
        table.by_backing.insert(st.st_ino, ino);
        Ok((inode, st))
    }

    /// Drops `n` kernel lookups of `ino`; the inode leaves the table at zero.
    pub(super) fn unref(&self, ino: u64, n: u64) {
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

    /// The node id a directory listing reports for a backing inode.
    pub(super) fn listed_ino(&self, backing: u64) -> u64 {
        self.inodes
            .read()
            .by_backing
            .get(&backing)
            .copied()
            .unwrap_or(backing)
    }

    /// Forgets the name → node link of a backing inode that an unlink or a
    /// replacing rename just freed.
    pub(super) fn drop_backing(&self, backing: u64) {
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

    /// Hands the fd of a backing object whose name was just removed to the
    /// reclaim queue when it was the last name of a regular file (freeing
    /// its blocks is the slow part); anything else is closed at once, and
    /// so is everything while free space is below the ENOSPC margin (a
    /// write right after the unlink must find the space free: fs/space.rs).
    pub(super) fn reclaim_unlinked(&self, fd: OwnedFd, st: &libc::stat) {
        if EntryKind::of_mode(st.st_mode) == EntryKind::File
            && st.st_nlink <= 1
            && !self.write_through()
        {
            self.reclaim
                .reclaim(fd, (st.st_blocks as u64).saturating_mul(512));
        }
    }
}
