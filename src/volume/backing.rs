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

/// An `O_PATH` descriptor of the backing directory at the relative path
/// `rel` below `dir`, opened one component at a time with `O_NOFOLLOW`
/// (`O_NOFOLLOW` on a whole path guards only its last component: a
/// symlink swapped in for a middle one would be followed out of the
/// cipher directory). An empty path (or `.`) is `dir` itself; `..` and
/// absolute paths are refused.
pub fn open_dir_under(dir: BorrowedFd<'_>, rel: &std::path::Path) -> io::Result<OwnedFd> {
    use std::path::Component;
    let mut cur = sys::openat(dir, OsStr::new("."), libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for c in rel.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(name) => cur = open_dir(std::os::fd::AsFd::as_fd(&cur), name)?,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
    Ok(cur)
}

/// An `O_PATH` descriptor of `entry` itself (never through a symlink),
/// pinning the object whatever happens to its name.
pub fn pin(dir: BorrowedFd<'_>, entry: &OsStr) -> io::Result<OwnedFd> {
    sys::openat(dir, entry, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Opens the backing file `entry` for its content: read-write, or read-only
/// when `writable` is false; never through a symlink, and never blocking:
/// `O_NONBLOCK` makes the open of a FIFO swapped in since the lookup
/// return at once (it has no effect on a regular file's reads and
/// writes). The caller checks the fd's type with the `fstat` it makes
/// anyway ([`super::Volume::open_file`] refuses anything but a regular
/// file), so the hot open path costs no extra system call.
/// Reading through it leaves the backing atime alone (`O_NOATIME` where
/// allowed): the daemon reading a header is not an access of the file.
pub fn open_file(dir: BorrowedFd<'_>, entry: &OsStr, writable: bool) -> io::Result<File> {
    let access = if writable {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    };
    sys::noatime(
        access | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        |f| sys::openat(dir, entry, f, 0),
    )
    .map(File::from)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_middle_component_symlink_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(outside.join("b")).unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("real/b")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a")).unwrap();
        let r = sys::open_dir_path(&root).unwrap();
        assert!(open_dir_under(r.as_fd(), std::path::Path::new("real/b")).is_ok());
        assert!(open_dir_under(r.as_fd(), std::path::Path::new("")).is_ok());
        // O_NOFOLLOW on the whole path would have gone through `a`.
        assert!(sys::openat(
            r.as_fd(),
            std::ffi::OsStr::new("a/b"),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0
        )
        .is_ok());
        assert!(open_dir_under(r.as_fd(), std::path::Path::new("a/b")).is_err());
        assert!(open_dir_under(r.as_fd(), std::path::Path::new("real/../a")).is_err());
    }

    #[test]
    fn opening_a_fifo_swapped_in_for_a_file_does_not_block() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("f");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let d = sys::open_dir_path(t.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let fd = d.try_clone().unwrap();
        std::thread::spawn(move || {
            let r = open_file(fd.as_fd(), std::ffi::OsStr::new("f"), false)
                .map(|f| f.metadata().map(|m| m.is_file()));
            let _ = tx.send(r.is_ok_and(|m| m.ok() == Some(false)));
        });
        let opened = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the open of a FIFO blocked");
        assert!(opened, "the open returned a FIFO the caller can tell apart");
    }
}
