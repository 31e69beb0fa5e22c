//! Thin, safe wrappers over the system calls sealfs needs, and the clock.
//!
//! Owns: turning paths relative to directory fds into libc calls and errno
//! into `io::Error`; reaching sealfs's own files in the cipher directory
//! without following a symlink or opening anything but a regular file
//! ([`open_regular`], [`write_durably`], [`WrongKind`]); the wall clock
//! ([`now_secs`], [`now_ms`]).
//! Must never: interpret what it reads, or know about volumes, keys or FUSE
//! (it sits below every other module that does I/O).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `openat(2)` returning an owned fd (always `O_CLOEXEC`).
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid C string and fd; the returned fd is owned by us.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reopens an `O_PATH` fd with real access `flags` through /proc/self/fd.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<File> {
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let c = CString::new(p).expect("no NUL");
    // SAFETY: valid C string.
    let raw = check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: raw was just returned by open.
    Ok(unsafe { File::from_raw_fd(raw) })
}

/// The /proc path of an fd, for std APIs that want a path.
pub fn proc_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    format!("/proc/self/fd/{}", fd.as_raw_fd()).into()
}

/// `fstatat(2)` with `AT_SYMLINK_NOFOLLOW`; an empty name stats the fd itself.
pub fn fstatat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: valid pointers.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// `mkdirat(2)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string and fd.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(|_| ())
}

/// `unlinkat(2)`; `dir_flag` removes a directory.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, remove_dir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid C string and fd.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(|_| ())
}

/// `renameat2(2)` with flags (`RENAME_NOREPLACE`, …).
pub fn renameat2(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let a = cstr(from)?;
    let b = cstr(to)?;
    // SAFETY: valid C strings and fds.
    check(unsafe {
        libc::renameat2(
            from_dir.as_raw_fd(),
            a.as_ptr(),
            to_dir.as_raw_fd(),
            b.as_ptr(),
            flags,
        )
    })
    .map(|_| ())
}

/// `linkat(2)` without following a symlink at `from`.
pub fn linkat(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    let a = cstr(from)?;
    let b = cstr(to)?;
    // SAFETY: valid C strings and fds.
    check(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            a.as_ptr(),
            to_dir.as_raw_fd(),
            b.as_ptr(),
            0,
        )
    })
    .map(|_| ())
}

/// The process's umask, read once from /proc/self/status (reading it with
/// umask(2) would change it for a moment under other threads); 0o777 when
/// it cannot be read, so callers that skip a chmod when no bit was masked
/// never skip one wrongly.
pub fn process_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o777)
    })
}

/// Whether `O_TMPFILE` was refused here before (the backing filesystem or
/// the kernel lacks it: NFS, FUSE, old kernels): then it is not tried again.
static UNNAMED_UNSUPPORTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// An unnamed regular file in `dir` (`O_TMPFILE`, read-write, permission
/// bits `mode` less the umask), to be named with [`link_unnamed`] once it
/// is complete: until then no crash can leave it behind. `None` when the
/// backing filesystem cannot make one (the caller creates a named file).
pub fn open_unnamed(dir: BorrowedFd<'_>, mode: u32) -> io::Result<Option<File>> {
    use std::sync::atomic::Ordering;
    if UNNAMED_UNSUPPORTED.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let flags = libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC;
    // SAFETY: a valid C string and fd.
    let r = unsafe { libc::openat(dir.as_raw_fd(), c".".as_ptr(), flags, mode as libc::c_uint) };
    if r >= 0 {
        // SAFETY: r was just returned by openat.
        return Ok(Some(unsafe { File::from_raw_fd(r) }));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // EOPNOTSUPP: the filesystem has no O_TMPFILE; EISDIR/EINVAL: a
        // kernel that predates it reads the flags as O_DIRECTORY.
        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL) => {
            UNNAMED_UNSUPPORTED.store(true, Ordering::Relaxed);
            Ok(None)
        }
        _ => Err(e),
    }
}

/// Names the unnamed file `f` (from [`open_unnamed`]) `name` in `dir`:
/// `linkat` of its /proc/self/fd path, or with `AT_EMPTY_PATH` where /proc
/// is not mounted (that needs `CAP_DAC_READ_SEARCH`). `EEXIST` if the name
/// is taken (nothing is replaced).
pub fn link_unnamed(f: &File, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let to = cstr(name)?;
    let from = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("no NUL");
    // SAFETY: valid C strings and fds.
    let r = check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            dir.as_raw_fd(),
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    });
    match r {
        Err(e)
            if e.raw_os_error() == Some(libc::ENOENT)
                && !std::path::Path::new("/proc/self/fd").exists() =>
        {
            // SAFETY: valid C strings and fds.
            check(unsafe {
                libc::linkat(
                    f.as_raw_fd(),
                    c"".as_ptr(),
                    dir.as_raw_fd(),
                    to.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            })
            .map(|_| ())
        }
        r => r.map(|_| ()),
    }
}

/// `symlinkat(2)`.
pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: valid C strings and fd.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(|_| ())
}

/// `readlinkat(2)`; an empty name reads the link an `O_PATH` fd refers to.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buffer is valid for its length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `mknodat(2)`.
pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string and fd.
    check(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            c.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })
    .map(|_| ())
}

fn at_flags(name: &OsStr) -> i32 {
    libc::AT_SYMLINK_NOFOLLOW
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        }
}

/// `fchownat(2)` without following symlinks; an empty name means `dir` itself.
pub fn fchownat(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    let c = cstr(name)?;
    let u = uid.unwrap_or(u32::MAX);
    let g = gid.unwrap_or(u32::MAX);
    // SAFETY: valid C string and fd.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), c.as_ptr(), u, g, at_flags(name)) }).map(|_| ())
}

/// chmod of `name` in `dir` (an empty name means `dir` itself, which must
/// not be a symlink).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    if name.is_empty() {
        let p = CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd())).expect("no NUL");
        // SAFETY: valid C string.
        return check(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }).map(|_| ());
    }
    let c = cstr(name)?;
    // SAFETY: valid C string and fd.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) })
        .map(|_| ())
}

/// A timestamp for [`utimensat`]: a time, now, or unchanged.
#[derive(Debug, Clone, Copy)]
pub enum TimeSpec {
    /// Leave as is.
    Omit,
    /// The current time.
    Now,
    /// Seconds and nanoseconds since the epoch.
    At(i64, i64),
}

impl TimeSpec {
    fn to_libc(self) -> libc::timespec {
        match self {
            TimeSpec::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            TimeSpec::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeSpec::At(s, n) => libc::timespec {
                tv_sec: s,
                tv_nsec: n,
            },
        }
    }
}

/// `utimensat(2)` without following symlinks; an empty name means `dir` itself.
pub fn utimensat(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    atime: TimeSpec,
    mtime: TimeSpec,
) -> io::Result<()> {
    let c = cstr(name)?;
    let ts = [atime.to_libc(), mtime.to_libc()];
    // SAFETY: valid pointers.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), c.as_ptr(), ts.as_ptr(), at_flags(name)) })
        .map(|_| ())
}

/// `fallocate(2)`.
pub fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(|_| ())
}

/// `fstatvfs(2)`.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let f = reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    check(unsafe { libc::fstatvfs(f.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Reads exactly `buf.len()` bytes at `offset`; a short file is an error.
pub fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    f.read_exact_at(buf, offset)
}

/// Reads up to `buf.len()` bytes at `offset` (fewer only at the end of
/// the file); how many.
pub fn read_at_most(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes all of `buf` at `offset`.
pub fn write_all_at(f: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    f.write_all_at(buf, offset)
}

/// `fdatasync(2)`.
pub fn fdatasync(f: &File) -> io::Result<()> {
    f.sync_data()
}

/// fsync of a directory given as an `O_PATH` fd.
pub fn fsync_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?.sync_all()
}

// ------------------------------------------------------------ sealfs's own files
//
// Everything in the cipher directory is attacker-controlled input. sealfs's
// own files there (config, keyring copies, lock, grants, audit segments,
// directory records, their temp files) are reached only through a directory
// fd, never through a path that could cross a planted symlink; a name that
// holds something other than what sealfs keeps there is refused, never
// followed, opened or blocked on.

/// What kind of object `mode` (an `st_mode`) is, in words.
pub fn kind_name(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "file of unknown type",
    }
}

/// A name in the cipher directory where sealfs keeps one of its own files
/// holds another kind of object (a planted symlink, a FIFO, …).
#[derive(Debug)]
pub struct WrongKind {
    /// The name, relative to the directory it was looked up in.
    pub name: String,
    /// What was found there.
    pub found: &'static str,
    /// What sealfs keeps there.
    pub expected: &'static str,
}

impl std::fmt::Display for WrongKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in the cipher directory is a {} where sealfs keeps a {}; sealfs never follows, \
             opens or replaces it. Move it away (it was not made by sealfs) and try again; \
             'sealfs fsck --salvage' rebuilds sealfs's own files from their second copies",
            self.name, self.found, self.expected
        )
    }
}

impl std::error::Error for WrongKind {}

impl WrongKind {
    /// Whether `e` is (or wraps) a [`WrongKind`] refusal.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|i| i.is::<WrongKind>())
    }
}

fn wrong_kind(name: &OsStr, found: libc::mode_t, expected: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        WrongKind {
            name: name.to_string_lossy().into_owned(),
            found: kind_name(found),
            expected,
        },
    )
}

/// `fstat(2)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    fstatat(fd, OsStr::new(""))
}

/// Opens the existing regular file `name` in `dir` with `flags` (no
/// `O_CREAT`), without following a symlink and without opening anything
/// else: the name is first pinned with `O_PATH | O_NOFOLLOW` (which opens
/// nothing), checked to be a regular file, and only then reopened with the
/// real access mode, so a FIFO or device planted there is never opened and
/// a swap between the check and the open cannot redirect it.
pub fn open_regular(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<File> {
    let pinned = openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    let st = fstat(pinned.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(wrong_kind(name, st.st_mode, "regular file"));
    }
    let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
    noatime(flags, |f| reopen(pinned.as_fd(), f))
}

/// Opens with `flags | O_NOATIME` (reading sealfs's own bytes, a header or
/// a chunk, is not an access of the plaintext file: the backing atime is
/// the file's atime), or without it where the kernel refuses it (EPERM:
/// neither the owner nor CAP_FOWNER).
pub fn noatime<T>(flags: i32, open: impl Fn(i32) -> io::Result<T>) -> io::Result<T> {
    match open(flags | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(flags),
        other => other,
    }
}

/// Reads the whole regular file `name` in `dir` (see [`open_regular`]).
pub fn read_regular(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_regular(dir, name, libc::O_RDONLY)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Like [`read_regular`], refusing (`InvalidData`) a file longer than
/// `max` bytes without reading more than that: for small files an
/// attacker could replace with a huge one (a long name's sidecar).
pub fn read_regular_limited(dir: BorrowedFd<'_>, name: &OsStr, max: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(dir, name, libc::O_RDONLY)?;
    let mut out = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut out)?;
    if out.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", name.to_string_lossy()),
        ));
    }
    Ok(out)
}

/// Opens the regular file `name` in `dir` read-write, creating it (empty,
/// with `mode`) when absent. Never follows a symlink or opens another kind
/// of object at `name`.
pub fn open_or_create_regular(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<File> {
    loop {
        match open_regular(dir, name, libc::O_RDWR) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        match openat(dir, name, flags, mode) {
            Ok(fd) => return Ok(File::from(fd)),
            // Made by someone else in between: look again.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Opens the subdirectory `name` of `dir` without following a symlink;
/// anything else than a directory there is refused as [`WrongKind`].
pub fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    match openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            let st = fstatat(dir, name)?;
            Err(wrong_kind(name, st.st_mode, "directory"))
        }
        other => other,
    }
}

/// Opens the directory at `path` (the cipher directory itself, as the user
/// named it) for `*at` calls.
pub fn open_dir_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: valid C string; the returned fd is owned by us.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Fails with [`WrongKind`] when `name` exists in `dir` and is not a
/// regular file; absent is fine.
pub fn check_regular_or_absent(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match fstatat(dir, name) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Ok(()),
        Ok(st) => Err(wrong_kind(name, st.st_mode, "regular file")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a leftover regular file `name` from `dir` (a temp file of an
/// interrupted write); absent is fine, any other kind of object is refused.
pub fn remove_stale_regular(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    check_regular_or_absent(dir, name)?;
    match unlinkat(dir, name, false) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates the new regular file `name` in `dir` (`O_EXCL`: never an
/// existing object, never through a symlink).
pub fn create_new_regular(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<File> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    openat(dir, name, flags, mode).map(File::from)
}

/// Replaces the regular file `name` in `dir` with `bytes`, durably and
/// atomically: a fresh temp file `NAME.tmp` (a stale one is removed first;
/// `O_EXCL`, `mode`), written and fsynced, renamed over `name`, and the
/// directory fsynced. At every instant `name` holds the old or the new
/// content. A `name` or temp name that holds anything but a regular file is
/// refused ([`WrongKind`]) and left as it is.
pub fn write_durably(dir: BorrowedFd<'_>, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = OsStr::new(name);
    check_regular_or_absent(dir, name)?;
    let mut tmp = name.to_os_string();
    tmp.push(crate::format::reserved::TEMP_SUFFIX);
    remove_stale_regular(dir, &tmp)?;
    let f = create_new_regular(dir, &tmp, mode)?;
    let written = write_all_at(&f, bytes, 0).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| renameat2(dir, &tmp, dir, name, 0)) {
        let _ = unlinkat(dir, &tmp, false);
        return Err(e);
    }
    fsync_dir(dir)
}

// ------------------------------------------------------------ extended attributes

/// The path that reaches `entry` of `dir` for the path-based xattr calls:
/// `/proc/self/fd/DIR/ENTRY` (the directory's magic link is followed, the
/// entry itself is not by the `l*` calls), or, for an empty entry, the
/// directory itself through its magic link (followed by the plain calls).
fn xattr_path(dir: BorrowedFd<'_>, entry: &OsStr) -> io::Result<(CString, bool)> {
    let mut p = proc_path(dir).into_os_string();
    let follow = entry.is_empty();
    if !follow {
        p.push("/");
        p.push(entry);
    }
    Ok((cstr(&p)?, follow))
}

fn xattr_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The value of the xattr `name` of `entry` in `dir` (of `dir` itself for
/// an empty entry), never following a symlink at `entry`. `Ok(None)`: the
/// object has no such attribute.
pub fn get_xattr(dir: BorrowedFd<'_>, entry: &OsStr, name: &str) -> io::Result<Option<Vec<u8>>> {
    let (path, follow) = xattr_path(dir, entry)?;
    let n = xattr_name(name)?;
    let get = |buf: &mut [u8]| -> isize {
        let (p, len) = (buf.as_mut_ptr() as *mut libc::c_void, buf.len());
        // SAFETY: valid C strings; the buffer is valid for `len` bytes.
        unsafe {
            if follow {
                libc::getxattr(path.as_ptr(), n.as_ptr(), p, len)
            } else {
                libc::lgetxattr(path.as_ptr(), n.as_ptr(), p, len)
            }
        }
    };
    read_sized(get)
}

/// Calls `get` with a buffer big enough for the value (asking for the size
/// first, again if it grew in between).
fn read_sized(get: impl Fn(&mut [u8]) -> isize) -> io::Result<Option<Vec<u8>>> {
    loop {
        let size = get(&mut []);
        if size < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; size as usize];
        let got = get(&mut buf);
        if got < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => continue,
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(e),
            }
        }
        buf.truncate(got as usize);
        return Ok(Some(buf));
    }
}

/// Sets the xattr `name` of `entry` in `dir` (of `dir` itself for an empty
/// entry) to `value`; `flags` is 0, `XATTR_CREATE` or `XATTR_REPLACE`.
pub fn set_xattr(
    dir: BorrowedFd<'_>,
    entry: &OsStr,
    name: &str,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let (path, follow) = xattr_path(dir, entry)?;
    let n = xattr_name(name)?;
    let v = value.as_ptr() as *const libc::c_void;
    // SAFETY: valid C strings and value buffer.
    check(unsafe {
        if follow {
            libc::setxattr(path.as_ptr(), n.as_ptr(), v, value.len(), flags)
        } else {
            libc::lsetxattr(path.as_ptr(), n.as_ptr(), v, value.len(), flags)
        }
    })
    .map(|_| ())
}

/// Removes the xattr `name` of `entry` in `dir` (ENODATA if absent).
pub fn remove_xattr(dir: BorrowedFd<'_>, entry: &OsStr, name: &str) -> io::Result<()> {
    let (path, follow) = xattr_path(dir, entry)?;
    let n = xattr_name(name)?;
    // SAFETY: valid C strings.
    check(unsafe {
        if follow {
            libc::removexattr(path.as_ptr(), n.as_ptr())
        } else {
            libc::lremovexattr(path.as_ptr(), n.as_ptr())
        }
    })
    .map(|_| ())
}

/// The xattr names of `entry` in `dir` (of `dir` itself for an empty entry).
pub fn list_xattrs(dir: BorrowedFd<'_>, entry: &OsStr) -> io::Result<Vec<Vec<u8>>> {
    let (path, follow) = xattr_path(dir, entry)?;
    let list = |buf: &mut [u8]| -> isize {
        let (p, len) = (buf.as_mut_ptr() as *mut libc::c_char, buf.len());
        // SAFETY: valid C string; the buffer is valid for `len` bytes.
        unsafe {
            if follow {
                libc::listxattr(path.as_ptr(), p, len)
            } else {
                libc::llistxattr(path.as_ptr(), p, len)
            }
        }
    };
    Ok(split_names(read_sized(list)?.unwrap_or_default()))
}

fn split_names(buf: Vec<u8>) -> Vec<Vec<u8>> {
    buf.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// `fgetxattr(2)` on an open file; `Ok(None)` when absent.
pub fn fget_xattr(f: &File, name: &str) -> io::Result<Option<Vec<u8>>> {
    let n = xattr_name(name)?;
    read_sized(|buf: &mut [u8]| {
        // SAFETY: valid fd, C string and buffer.
        unsafe {
            libc::fgetxattr(
                f.as_raw_fd(),
                n.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        }
    })
}

/// `fsetxattr(2)` on an open file.
pub fn fset_xattr(f: &File, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let n = xattr_name(name)?;
    // SAFETY: valid fd, C string and value buffer.
    check(unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
    .map(|_| ())
}

/// `flistxattr(2)` on an open file.
pub fn flist_xattrs(f: &File) -> io::Result<Vec<Vec<u8>>> {
    let list = |buf: &mut [u8]| -> isize {
        // SAFETY: valid fd and buffer.
        unsafe {
            libc::flistxattr(
                f.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
            )
        }
    };
    Ok(split_names(read_sized(list)?.unwrap_or_default()))
}

/// `futimens(2)`: sets an open file's times (`Omit` leaves one as it is).
pub fn futimens(f: &File, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    let ts = [atime.to_libc(), mtime.to_libc()];
    // SAFETY: valid fd and timespec array.
    check(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) }).map(|_| ())
}

// ------------------------------------------------------------ byte-range locks

/// The kind of an open-file-description byte-range lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeLockKind {
    /// Many holders at once (`F_RDLCK`; the fd must be open for reading).
    Shared,
    /// One holder (`F_WRLCK`; the fd must be open for writing).
    Exclusive,
}

fn flock_of(kind: Option<RangeLockKind>, start: u64, len: u64) -> io::Result<libc::flock> {
    let off =
        |v: u64| libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        Some(RangeLockKind::Shared) => libc::F_RDLCK,
        Some(RangeLockKind::Exclusive) => libc::F_WRLCK,
        None => libc::F_UNLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = off(start)?;
    fl.l_len = off(len)?;
    // OFD locks need l_pid = 0.
    fl.l_pid = 0;
    Ok(fl)
}

/// Takes (`Some(kind)`) or drops (`None`) an OFD byte-range lock
/// (`fcntl(F_OFD_SETLK[W])`) on `len` bytes at `start` of `fd`. The lock
/// belongs to the open file description: it is dropped when the last fd
/// of it closes, and two fds of one description never conflict. With
/// `wait` it blocks until granted (EINTR retried); without, `Ok(false)`
/// says another description holds a conflicting lock. NFSv4, CephFS and
/// local filesystems honour these locks between hosts and processes.
pub fn range_lock(
    fd: BorrowedFd<'_>,
    kind: Option<RangeLockKind>,
    start: u64,
    len: u64,
    wait: bool,
) -> io::Result<bool> {
    let fl = flock_of(kind, start, len)?;
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: valid fd and a valid flock for the call's duration.
        if unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &fl) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// The kind of a lock another open file description holds that would
/// conflict with `kind` on `len` bytes at `start` (`F_OFD_GETLK`), if any.
pub fn range_lock_conflict(
    fd: BorrowedFd<'_>,
    kind: RangeLockKind,
    start: u64,
    len: u64,
) -> io::Result<Option<RangeLockKind>> {
    let mut fl = flock_of(Some(kind), start, len)?;
    // SAFETY: valid fd and a valid, writable flock for the call's duration.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(match fl.l_type as libc::c_int {
        libc::F_RDLCK => Some(RangeLockKind::Shared),
        libc::F_WRLCK => Some(RangeLockKind::Exclusive),
        _ => None,
    })
}
