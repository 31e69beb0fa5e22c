//! Free space in CIPHERDIR, and when new opens go write-through.
//!
//! With the kernel's writeback cache a `write()` returns once the page is
//! dirty: the daemon sees the data seconds later, and a full disk then
//! shows only at `close()` or `fsync()`. So that `write()` itself gets
//! ENOSPC, files opened while the free space in CIPHERDIR is below a
//! safety *margin* are opened write-through (`FOPEN_DIRECT_IO`): every
//! write reaches the daemon before it returns. The margin must cover what
//! the kernel may hold dirty for this mount: the FUSE bdi is throttled at
//! its own limit (`strictlimit`), which the kernel reports as
//! `/sys/class/bdi/MAJ:MIN/max_bytes`; the default margin is twice that
//! (dirty pages plus those already in writeback), at least
//! [`MIN_MARGIN`], or [`FALLBACK_MARGIN`] when the bdi cannot be found.
//!
//! Owns: the free-space check (at most every [`CHECK_EVERY`], one
//! `fstatvfs`) and the margin. Must never: block a request on more than
//! one `fstatvfs`, or change the open mode of a file already open.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often free space is asked for at most.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// The smallest default margin.
pub const MIN_MARGIN: u64 = 64 << 20;
/// The default margin when the mount's bdi limit cannot be read.
pub const FALLBACK_MARGIN: u64 = 128 << 20;

/// Free space in CIPHERDIR against the margin, for one mount.
#[derive(Debug)]
pub struct SpaceGuard {
    dir: OwnedFd,
    /// The margin given (`--enospc-margin`), else found at the first check.
    given: Option<u64>,
    mountpoint: Option<PathBuf>,
    margin: OnceLock<u64>,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last check, plus one (0: never).
    checked_ms: AtomicU64,
    free: AtomicU64,
    low: AtomicBool,
}

impl SpaceGuard {
    /// A guard of the file system holding `dir` (CIPHERDIR's root), with
    /// the margin `given` or the default one of the mount at `mountpoint`.
    pub fn new(dir: OwnedFd, given: Option<u64>, mountpoint: Option<&Path>) -> Self {
        SpaceGuard {
            dir,
            given,
            mountpoint: mountpoint.map(Path::to_path_buf),
            margin: OnceLock::new(),
            epoch: Instant::now(),
            checked_ms: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        }
    }

    /// The margin in bytes.
    pub fn margin(&self) -> u64 {
        *self.margin.get_or_init(|| {
            self.given.unwrap_or_else(|| {
                self.mountpoint
                    .as_deref()
                    .and_then(bdi_max_bytes)
                    .map_or(FALLBACK_MARGIN, |b| b.saturating_mul(2).max(MIN_MARGIN))
            })
        })
    }

    /// Whether a file opened now should be write-through (free space below
    /// the margin). Asks the file system at most every 100 ms.
    pub fn write_through(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.checked_ms.load(Relaxed);
        if last == 0 || now.saturating_sub(last) >= CHECK_EVERY.as_millis() as u64 {
            self.checked_ms.store(now, Relaxed);
            self.check();
        }
        self.low.load(Relaxed)
    }

    /// Asks for the free space now and publishes it (metrics, status).
    pub fn check(&self) {
        let margin = self.margin();
        if let Some(free) = free_bytes(self.dir.as_fd()) {
            self.free.store(free, Relaxed);
            let low = free < margin;
            if low != self.low.swap(low, Relaxed) {
                if low {
                    tracing::warn!(
                        free,
                        margin,
                        "free space below the margin: new opens write-through"
                    );
                } else {
                    tracing::info!(free, margin, "free space above the margin again");
                }
            }
        }
        crate::metrics::space(self.free.load(Relaxed), margin, self.low.load(Relaxed));
    }
}

/// Bytes an unprivileged writer may still use on the file system of `fd`.
fn free_bytes(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `s` is a valid out-pointer and `fd` an open descriptor.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

/// The dirty limit the kernel applies to the FUSE mount at `mountpoint`
/// (`max_bytes` of its bdi, found through /proc/self/mountinfo: no request
/// to the mount itself).
fn bdi_max_bytes(mountpoint: &Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dev = mountinfo_dev(&info, mountpoint)?;
    let s = std::fs::read_to_string(format!("/sys/class/bdi/{dev}/max_bytes")).ok()?;
    s.trim().parse().ok().filter(|&b| b > 0)
}

/// The `MAJ:MIN` of the last mount on `mountpoint` in a mountinfo text.
fn mountinfo_dev(info: &str, mountpoint: &Path) -> Option<String> {
    let want = mountpoint.to_str()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && unescape(f[4]) == want).then(|| f[2].to_string())
    })
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|t| u8::from_str_radix(t, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_device_of_a_mount_point() {
        let info = "36 35 98:0 / /mnt1 rw - ext3 /dev/root rw\n\
                    80 36 0:41 / /tmp/a\\040b rw,nosuid - fuse.sealfs sealfs rw\n";
        assert_eq!(
            mountinfo_dev(info, Path::new("/tmp/a b")).as_deref(),
            Some("0:41")
        );
        assert_eq!(
            mountinfo_dev(info, Path::new("/mnt1")).as_deref(),
            Some("98:0")
        );
        assert_eq!(mountinfo_dev(info, Path::new("/nope")), None);
    }

    #[test]
    fn a_given_margin_wins_and_a_check_publishes() {
        let dir: OwnedFd = std::fs::File::open("/").unwrap().into();
        let g = SpaceGuard::new(dir, Some(u64::MAX), None);
        assert_eq!(g.margin(), u64::MAX);
        assert!(g.write_through());
        let dir: OwnedFd = std::fs::File::open("/").unwrap().into();
        let g = SpaceGuard::new(dir, Some(0), None);
        assert!(!g.write_through());
        let dir: OwnedFd = std::fs::File::open("/").unwrap().into();
        let g = SpaceGuard::new(dir, None, Some(Path::new("/nonexistent")));
        assert_eq!(g.margin(), FALLBACK_MARGIN);
    }
}
