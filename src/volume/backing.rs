//! One backing object of a volume, reached as (directory fd, entry name):
//! what kind it is, its attributes, and the plain system calls on it that
//! carry no sealfs meaning — stat, mode, owner, times, a symlink's stored
//! (sealed) target, opening a backing directory or file, syncing a
//! directory, free space.
//!
//! Every call here takes the entry name relative to a directory fd (an
//! empty name means the fd itself) and never follows a symlink at it, so a
//! frontend or the library reaches backing objects only through these and
//! through [`super::namespace`] (which changes names), never through raw
//! system calls of its own.
//!
//! Owns: the open flags and `*at` flags used on backing objects, and
//! [`EntryKind`], the one type for "what is this backing object".
//! Must never: change a name (create, rename, remove: see
//! [`super::namespace`]), or interpret content, headers or names.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::sys;

pub use crate::sys::TimeSpec;

/// What a backing object (and so a volume entry) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl EntryKind {
    /// The kind of an object with `st_mode` `mode`.
    pub fn of_mode(mode: libc::mode_t) -> EntryKind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => EntryKind::File,
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink,
            _ => EntryKind::Other,
        }
    }

    /// The kind a directory entry's file type says.
    pub fn of_file_type(t: std::fs::FileType) -> EntryKind {
        if t.is_dir() {
            EntryKind::Dir
        } else if t.is_file() {
            EntryKind::File
        } else if t.is_symlink() {
            EntryKind::Symlink
        } else {
            EntryKind::Other
        }
    }
}

/// The attributes of `entry` in `dir` (of `dir` itself for an empty name),
/// without following a symlink.
pub fn stat(dir: BorrowedFd<'_>, entry: &OsStr) -> io::Result<libc::stat> {
    sys::fstatat(dir, entry)
}

/// Sets the permission bits of `entry` (of `dir` itself for an empty name,
/// which must not be a symlink).
pub fn set_mode(dir: BorrowedFd<'_>, entry: &OsStr, mode: u32) -> io::Result<()> {
    sys::fchmodat(dir, entry, mode)
}

/// Changes the owner and/or group of `entry`, not following a symlink.
pub fn set_owner(
    dir: BorrowedFd<'_>,
    entry: &OsStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    sys::fchownat(dir, entry, uid, gid)
}

/// Sets the access and modification times of `entry`, not following a symlink.
pub fn set_times(
    dir: BorrowedFd<'_>,
    entry: &OsStr,
    atime: TimeSpec,
    mtime: TimeSpec,
) -> io::Result<()> {
    sys::utimensat(dir, entry, atime, mtime)
}

/// The stored (sealed) target of the symlink `entry`.
pub fn read_link(dir: BorrowedFd<'_>, entry: &OsStr) -> io::Result<Vec<u8>> {
    sys::readlinkat(dir, entry)
}

/// An `O_PATH` descriptor of the backing directory `entry` (never through a
/// symlink): the anchor of every `*at` call below it.
pub fn open_dir(dir: BorrowedFd<'_>, entry: &OsStr) -> io::Result<OwnedFd> {
    sys::openat(
        dir,
        entry,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// An `O_PATH` descriptor of `entry` itself (never through a symlink),
/// pinning the object whatever happens to its name.
pub fn pin(dir: BorrowedFd<'_>, entry: &OsStr) -> io::Result<OwnedFd> {
    sys::openat(dir, entry, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Opens the backing file `entry` for its content: read-write, or read-only
/// when `writable` is false; never through a symlink. Reading through it
/// leaves the backing atime alone (`O_NOATIME` where allowed): the daemon
/// reading a header is not an access of the file.
pub fn open_file(dir: BorrowedFd<'_>, entry: &OsStr, writable: bool) -> io::Result<File> {
    let access = if writable {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    };
    sys::noatime(access | libc::O_NOFOLLOW, |f| sys::openat(dir, entry, f, 0)).map(File::from)
}

/// Opens the existing regular file `entry` with `flags`, refusing anything
/// else at that name without opening it (see [`sys::open_regular`]).
pub fn open_regular(dir: BorrowedFd<'_>, entry: &OsStr, flags: i32) -> io::Result<File> {
    sys::open_regular(dir, entry, flags)
}

/// Makes the entries of the directory `dir` durable (fsync).
pub fn sync_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    sys::fsync_dir(dir)
}

/// Space and inodes of the filesystem `dir` lives on.
pub fn space(dir: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    sys::fstatvfs(dir)
}

/// The names in the backing directory `dir`, with their inode numbers and
/// file types, as `std::fs::read_dir` gives them.
pub fn read_dir(dir: BorrowedFd<'_>) -> io::Result<std::fs::ReadDir> {
    std::fs::read_dir(sys::proc_path(dir))
}
