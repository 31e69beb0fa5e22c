//! The control socket's file and the credentials of both ends: the
//! default socket directory, binding the socket in it, its mode, and
//! `SO_PEERCRED`.
//!
//! Owns: the default socket directory (`/run/sealfs` for root,
//! `$XDG_RUNTIME_DIR/sealfs`, or `/tmp/sealfs-UID`): created mode 0700
//! (0711 while it holds the socket of an `allow_other` mount, so grantees
//! can reach a socket whose name they know but never list or change the
//! directory), refused when it is a symlink, not a directory, or owned by
//! another uid, and its mode fixed with `fchmod` on the opened directory,
//! never through a path; binding through that directory's fd; setting the
//! socket's mode on the pinned socket inode; reading a peer's credentials.
//! Must never: chmod, unlink or bind through a path whose components an
//! attacker could swap for a symlink, or serve requests (that is
//! `ctl::server`).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::sys;

/// The credentials of a socket's other end at `connect()`/`listen()` time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id.
    pub pid: u32,
}

/// `SO_PEERCRED` of a connected Unix socket: for the server, the client
/// at `connect()`; for a client, the process that called `listen()`.
pub fn peer_cred(fd: BorrowedFd<'_>) -> Option<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd, pointer and length for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(PeerCred {
        uid: cred.uid,
        gid: cred.gid,
        pid: cred.pid as u32,
    })
}

fn euid() -> u32 {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() }
}

/// The default socket directory of a daemon running as `uid`.
pub fn default_socket_dir(uid: u32) -> PathBuf {
    if uid == 0 {
        PathBuf::from("/run/sealfs")
    } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(x).join("sealfs")
    } else {
        PathBuf::from(format!("/tmp/sealfs-{uid}"))
    }
}

fn refuse(dir: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "control socket directory {}: {why}; refusing to use it (remove it, or choose another path with --ctl-socket)",
            dir.display()
        ),
    )
}

/// Opens (creating it if absent) the private socket directory `dir`: owned
/// by this process's euid, a real directory (not a symlink), mode 0700, or
/// 0711 when `shared` (an `allow_other` mount's socket). Group and other
/// read/write bits found on it are removed, through the opened fd.
pub fn open_private_dir(dir: &Path, shared: bool) -> io::Result<OwnedFd> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(refuse(dir, "not a directory path".into()));
    };
    let parent_fd = sys::open_dir_path(parent)?;
    match sys::mkdirat(parent_fd.as_fd(), name, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let fd = match sys::openat(
        parent_fd.as_fd(),
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            let st = sys::fstatat(parent_fd.as_fd(), name)?;
            return Err(refuse(
                dir,
                format!("it is a {}, not a directory", sys::kind_name(st.st_mode)),
            ));
        }
        Err(e) => return Err(e),
    };
    let st = sys::fstat(fd.as_fd())?;
    if st.st_uid != euid() {
        return Err(refuse(
            dir,
            format!(
                "it is owned by uid {}, not by uid {} (someone else made it)",
                st.st_uid,
                euid()
            ),
        ));
    }
    let mode = st.st_mode & 0o7777;
    let want = (mode & 0o711) | 0o700 | if shared { 0o011 } else { 0 };
    if mode != want {
        // SAFETY: a valid directory fd.
        if unsafe { libc::fchmod(fd.as_raw_fd(), want as libc::mode_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Opens the directory of a socket path the user chose (`--ctl-socket`),
/// creating it if needed.
pub fn open_chosen_dir(dir: &Path) -> io::Result<OwnedFd> {
    std::fs::create_dir_all(dir)?;
    sys::open_dir_path(dir)
}

/// A path that reaches `name` in the directory `dir` through its fd
/// (`/proc/self/fd/N/NAME`), for the calls that only take paths (bind,
/// connect): whatever happens to the directory's own path, this one
/// resolves inside the opened directory.
fn through_fd(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    sys::proc_path(dir).join(name)
}

/// Where the socket is bound: its directory, name, and inode.
#[derive(Debug)]
pub struct BoundSocket {
    /// The socket's directory.
    pub dir: OwnedFd,
    /// Its name in the directory.
    pub name: std::ffi::OsString,
    /// (device, inode) of the socket file, to remove only that one.
    pub id: (u64, u64),
}

impl BoundSocket {
    /// Removes the socket file if it is still the one bound (not something
    /// put at its name since).
    pub fn remove(&self) {
        if let Ok(st) = sys::fstatat(self.dir.as_fd(), &self.name) {
            if (st.st_dev, st.st_ino) == self.id {
                let _ = sys::unlinkat(self.dir.as_fd(), &self.name, false);
            }
        }
    }
}

/// Binds a listening socket at `name` in `dir`, mode 0600 (0666 when
/// `shared`). A stale socket there (nothing answers) is replaced; a live
/// one, or anything that is not a socket, is refused.
pub fn bind(
    dir: OwnedFd,
    name: &OsStr,
    shown: &Path,
    shared: bool,
) -> io::Result<(UnixListener, BoundSocket)> {
    let path = through_fd(dir.as_fd(), name);
    if path.as_os_str().as_bytes().len() >= 108 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("control socket name {} is too long", shown.display()),
        ));
    }
    if let Ok(st) = sys::fstatat(dir.as_fd(), name) {
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "control socket path {} exists and is not a socket; choose another --ctl-socket",
                    shown.display()
                ),
            ));
        }
        if UnixStream::connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "control socket {} is in use by another mount",
                    shown.display()
                ),
            ));
        }
        sys::unlinkat(dir.as_fd(), name, false)?;
    }
    // SAFETY: umask only affects this process's file creation mode; 0177
    // is stricter than any umask, so files other threads create meanwhile
    // only get fewer permissions.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(&path);
    // SAFETY: restores the previous umask.
    unsafe { libc::umask(old) };
    let listener = bound?;
    // Pin the inode just bound (never through a symlink) and set its mode
    // on it: a chmod by path could follow a symlink swapped in.
    let pinned = sys::openat(dir.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    let st = sys::fstat(pinned.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_uid != euid() {
        return Err(io::Error::other(format!(
            "control socket {} was replaced while it was made",
            shown.display()
        )));
    }
    if shared {
        sys::fchmodat(pinned.as_fd(), OsStr::new(""), 0o666)?;
    }
    let id = (st.st_dev, st.st_ino);
    Ok((
        listener,
        BoundSocket {
            dir,
            name: name.to_os_string(),
            id,
        },
    ))
}
