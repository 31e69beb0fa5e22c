//! Shared-storage mode: several daemons (hosts) with one cipher directory
//! open read-write at once (`sealfs mount --shared-storage`,
//! docs/FORMAT.md §1.2).
//!
//! Owns: the mount-mode lock on `sealfs.lock` (a shared lock for each
//! shared-storage daemon, an exclusive one for any other writer), the
//! per-resource byte-range locks every change of a shared file is made
//! under ([`Resource`], [`ResourceGuard`]), and the schedule lease
//! (`sealfs.lease`: one host at a time runs the key schedules).
//! Must never: decide what a change is (callers re-read the resource under
//! its lock and apply their change to what they read), or hold a resource
//! lock across a wait for anything but the filesystem.
//!
//! All locks are OFD byte-range locks (`fcntl(F_OFD_SETLK[W])`), which
//! NFSv4 and CephFS carry between hosts. Each resource lock opens its own
//! description of `sealfs.lock`, so two threads of one daemon exclude each
//! other too (two fds of one description would not).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use crate::format::host_id::HostId;
use crate::format::lease::Lease;
use crate::format::reserved::{LEASE_FILE, LOCK_FILE};
use crate::sys::{self, RangeLockKind};
use crate::volume::VolumeError;

/// How often a shared-storage daemon looks for other hosts' changes, by
/// default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
/// The shortest refresh period accepted.
pub const MIN_REFRESH: Duration = Duration::from_millis(100);
/// The longest refresh period accepted: others' changes show within it.
pub const MAX_REFRESH: Duration = Duration::from_secs(2);
/// How long the schedule lease lasts unless renewed (its holder renews it
/// at every schedule tick, a third of this).
pub const LEASE_TIME: Duration = Duration::from_secs(6);

/// The choices of a shared-storage mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStorage {
    /// This host's name (the lease holder, its audit stream).
    pub host_id: HostId,
    /// How often others' changes are looked for (≤ [`MAX_REFRESH`]).
    pub refresh: Duration,
}

impl SharedStorage {
    /// Checks the refresh period ([`MIN_REFRESH`]..=[`MAX_REFRESH`]).
    pub fn new(host_id: HostId, refresh: Duration) -> Result<Self, String> {
        if !(MIN_REFRESH..=MAX_REFRESH).contains(&refresh) {
            return Err(format!(
                "--shared-refresh must lie between {} ms and {} s (got {} ms)",
                MIN_REFRESH.as_millis(),
                MAX_REFRESH.as_secs(),
                refresh.as_millis()
            ));
        }
        Ok(SharedStorage { host_id, refresh })
    }

    /// This machine's hostname as host id, and the default refresh period.
    pub fn with_defaults() -> Self {
        SharedStorage {
            host_id: default_host_id(),
            refresh: DEFAULT_REFRESH,
        }
    }
}

/// The machine's hostname, sanitised ([`HostId::from_hostname`]).
pub fn default_host_id() -> HostId {
    HostId::from_hostname()
}

/// What a byte-range lock of `sealfs.lock` stands for (docs/FORMAT.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Byte 0: the mount mode (shared by every shared-storage daemon,
    /// exclusive for any other writer).
    Mode,
    /// Byte 1: the keyring (both copies).
    Keyring,
    /// Byte 2: the grant store.
    Grants,
    /// Byte 3: the schedule lease.
    Lease,
    /// Byte 4: `sealfs.toml`.
    Config,
    /// Byte 2^32 + the first four bytes of the directory id (little
    /// endian): a directory's record (both copies). Two directories whose
    /// ids share those bytes only wait for each other.
    DirRecord([u8; 16]),
    /// Byte 2^33 + the low 32 bits of the backing file's inode number: a
    /// file's header block (re-binding, re-wrapping, its link table). The
    /// backing inode number is the same on every host of an NFS or CephFS
    /// share; a lock file needs no write permission on the file itself.
    FileHeader(u64),
    /// Byte 3 × 2^32 + the low 32 bits of the backing inode number: a
    /// file's content (chunks, their metadata entries, group states):
    /// shared while read, exclusive while written, so a chunk and its
    /// entry are only ever seen together.
    FileContent(u64),
}

impl Resource {
    /// The byte this resource's lock covers.
    pub fn offset(self) -> u64 {
        match self {
            Resource::Mode => 0,
            Resource::Keyring => 1,
            Resource::Grants => 2,
            Resource::Lease => 3,
            Resource::Config => 4,
            Resource::DirRecord(id) => {
                (1u64 << 32) + u64::from(u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
            }
            Resource::FileHeader(ino) => (2u64 << 32) + (ino & 0xffff_ffff),
            Resource::FileContent(ino) => (3u64 << 32) + (ino & 0xffff_ffff),
        }
    }
}

/// The mount-mode lock an opened writable volume holds on `sealfs.lock`.
#[derive(Debug)]
pub(crate) struct VolumeLock {
    _file: File,
}

/// Takes the mode lock: shared (`shared`: other shared-storage daemons
/// may hold it too) or exclusive (also `flock`ed, as builds before shared
/// storage did). Refused, naming the other mode, while it conflicts.
pub(crate) fn lock_volume(
    cipherdir: &Path,
    root: BorrowedFd<'_>,
    shared: bool,
) -> Result<VolumeLock, VolumeError> {
    let f = sys::open_or_create_regular(root, OsStr::new(LOCK_FILE), 0o600)?;
    let kind = if shared {
        RangeLockKind::Shared
    } else {
        RangeLockKind::Exclusive
    };
    let at = Resource::Mode.offset();
    if !sys::range_lock(f.as_fd(), Some(kind), at, 1, false)? {
        let holder = sys::range_lock_conflict(f.as_fd(), kind, at, 1)?;
        return Err(match (shared, holder) {
            (false, Some(RangeLockKind::Shared)) => VolumeError::InUseShared(cipherdir.into()),
            (true, _) => VolumeError::InUseExclusive(cipherdir.into()),
            (false, _) => VolumeError::InUse(cipherdir.into()),
        });
    }
    if !shared {
        // SAFETY: valid fd; flock has no memory effects.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(VolumeError::InUse(cipherdir.to_path_buf()));
            }
            return Err(e.into());
        }
    }
    Ok(VolumeLock { _file: f })
}

/// A resource's lock, held until dropped (closing its own description of
/// `sealfs.lock` releases it).
#[derive(Debug)]
pub struct ResourceGuard {
    _file: File,
}

/// Waits for and takes the exclusive lock of `r`.
pub(crate) fn lock_resource(
    root: BorrowedFd<'_>,
    r: Resource,
) -> Result<ResourceGuard, VolumeError> {
    lock_resource_as(root, r, RangeLockKind::Exclusive)
}

/// Waits for and takes the lock of `r`, shared or exclusive.
pub(crate) fn lock_resource_as(
    root: BorrowedFd<'_>,
    r: Resource,
    kind: RangeLockKind,
) -> Result<ResourceGuard, VolumeError> {
    let f = sys::open_regular(root, OsStr::new(LOCK_FILE), libc::O_RDWR)?;
    sys::range_lock(f.as_fd(), Some(kind), r.offset(), 1, true)?;
    Ok(ResourceGuard { _file: f })
}

/// Takes or renews the schedule lease for `me` until `now_ms` +
/// [`LEASE_TIME`] when nobody else holds it (under its lock); whether `me`
/// holds it now. An unreadable lease counts as nobody's.
pub(crate) fn take_lease(
    root: BorrowedFd<'_>,
    me: &HostId,
    now_ms: u64,
) -> Result<bool, VolumeError> {
    let _g = lock_resource(root, Resource::Lease)?;
    let current = match sys::read_regular_limited(root, OsStr::new(LEASE_FILE), 256) {
        Ok(b) => Lease::decode(&b).ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => None,
        Err(e) => return Err(e.into()),
    };
    if !Lease::may_take(current.as_ref(), me, now_ms) {
        return Ok(false);
    }
    let next = Lease {
        holder: me.clone(),
        expires_ms: now_ms + LEASE_TIME.as_millis() as u64,
    };
    sys::write_durably(root, LEASE_FILE, &next.encode(), 0o600)?;
    Ok(true)
}

/// Gives the lease up if `me` holds it (at a clean unmount: another host
/// takes over at its next tick instead of after the expiry).
pub(crate) fn release_lease(root: BorrowedFd<'_>, me: &HostId) -> Result<(), VolumeError> {
    let _g = lock_resource(root, Resource::Lease)?;
    let current = match sys::read_regular_limited(root, OsStr::new(LEASE_FILE), 256) {
        Ok(b) => Lease::decode(&b).ok(),
        Err(_) => None,
    };
    if current.is_some_and(|l| &l.holder == me) {
        let ended = Lease {
            holder: me.clone(),
            expires_ms: 0,
        };
        sys::write_durably(root, LEASE_FILE, &ended.encode(), 0o600)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_bounds() {
        let h = HostId::parse("a").unwrap();
        assert!(SharedStorage::new(h.clone(), Duration::from_millis(99)).is_err());
        assert!(SharedStorage::new(h.clone(), Duration::from_millis(2001)).is_err());
        assert!(SharedStorage::new(h, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn resources_have_distinct_bytes() {
        let rs = [
            Resource::Mode,
            Resource::Keyring,
            Resource::Grants,
            Resource::Lease,
            Resource::Config,
            Resource::DirRecord([0; 16]),
            Resource::FileHeader(0),
            Resource::FileContent(0),
        ];
        let mut seen: Vec<u64> = rs.iter().map(|r| r.offset()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), rs.len());
        assert_eq!(
            Resource::DirRecord([1, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]).offset(),
            (1 << 32) + 1
        );
    }

    #[test]
    fn resource_locks_exclude_each_other_within_one_process() {
        let d = tempfile::tempdir().unwrap();
        let root = sys::open_dir_path(d.path()).unwrap();
        let _mode = lock_volume(d.path(), root.as_fd(), true).unwrap();
        // A second shared mode lock coexists; an exclusive one is refused.
        let _mode2 = lock_volume(d.path(), root.as_fd(), true).unwrap();
        assert!(matches!(
            lock_volume(d.path(), root.as_fd(), false),
            Err(VolumeError::InUseShared(_))
        ));
        let g = lock_resource(root.as_fd(), Resource::Keyring).unwrap();
        let f = sys::open_regular(root.as_fd(), OsStr::new(LOCK_FILE), libc::O_RDWR).unwrap();
        let at = Resource::Keyring.offset();
        let ex = Some(RangeLockKind::Exclusive);
        assert!(!sys::range_lock(f.as_fd(), ex, at, 1, false).unwrap());
        assert!(sys::range_lock(f.as_fd(), ex, Resource::Grants.offset(), 1, false).unwrap());
        drop(g);
        assert!(sys::range_lock(f.as_fd(), ex, at, 1, false).unwrap());
    }

    #[test]
    fn exclusive_mode_refuses_shared() {
        let d = tempfile::tempdir().unwrap();
        let root = sys::open_dir_path(d.path()).unwrap();
        let _ex = lock_volume(d.path(), root.as_fd(), false).unwrap();
        assert!(matches!(
            lock_volume(d.path(), root.as_fd(), true),
            Err(VolumeError::InUseExclusive(_))
        ));
    }

    #[test]
    fn lease_goes_to_one_host_until_it_expires() {
        let d = tempfile::tempdir().unwrap();
        let root = sys::open_dir_path(d.path()).unwrap();
        let _m = lock_volume(d.path(), root.as_fd(), true).unwrap();
        let (a, b) = (HostId::parse("a").unwrap(), HostId::parse("b").unwrap());
        let lt = LEASE_TIME.as_millis() as u64;
        assert!(take_lease(root.as_fd(), &a, 1000).unwrap());
        assert!(!take_lease(root.as_fd(), &b, 1000 + lt - 1).unwrap());
        assert!(take_lease(root.as_fd(), &a, 2000).unwrap(), "renewed");
        assert!(!take_lease(root.as_fd(), &b, 2000 + lt - 1).unwrap());
        assert!(
            take_lease(root.as_fd(), &b, 2000 + lt).unwrap(),
            "taken over"
        );
        release_lease(root.as_fd(), &b).unwrap();
        assert!(take_lease(root.as_fd(), &a, 2001 + lt).unwrap(), "released");
    }
}
