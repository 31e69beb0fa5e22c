//! The mount as a fuser session: its configuration (mount options,
//! request loops), the kernel capabilities asked for at init, readahead,
//! the name in /proc/mounts; and what the daemon holds on a running mount:
//! [`CacheControl`] (the control plane reaching the kernel's caches) and
//! [`Activity`] (unmounting an idle mount).
//!
//! Owns: everything about the session that is not a request.
//! Must never: touch the volume.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::INodeNo;
use parking_lot::RwLock;

use crate::volume::EntryKind;

use crate::fs::inodes::Table;

/// A handle on the kernel's caches of this mount, for the control plane:
/// disabling the key (or revoking access) must also stop the kernel from
/// serving pages it already holds.
#[derive(Clone)]
pub struct CacheControl {
    pub(super) inodes: Arc<RwLock<Table>>,
    pub(super) notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

impl CacheControl {
    /// Gives the handle the session's notifier (once the session exists).
    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    /// Writes back and drops the kernel's cached data of every known file,
    /// so the next read reaches the daemon.
    pub fn invalidate_file_data(&self) {
        let Some(n) = self.notifier.get() else { return };
        let files: Vec<u64> = self
            .inodes
            .read()
            .nodes
            .values()
            .filter(|i| i.kind == EntryKind::File)
            .map(|i| i.ino)
            .collect();
        for ino in files {
            if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::warn!(ino, "cache invalidation failed: {e}");
                }
            }
        }
    }
}

/// Mount-time choices that shape the frontend.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users through (the kernel checks modes: `default_permissions`).
    pub allow_other: bool,
    /// Refuse every change.
    pub read_only: bool,
    /// Request loops.
    pub threads: usize,
    /// The kernel's generic mount options passed through (`noexec`,
    /// `noatime`, …; each one of [`GENERIC_OPTIONS`]).
    pub generic: Vec<String>,
    /// Free space in CIPHERDIR below which new opens are write-through
    /// (None: twice the mount's dirty limit, see [`crate::fs::SpaceGuard`]).
    pub enospc_margin: Option<u64>,
}

/// The kernel's generic mount options a sealfs mount passes through, with
/// their `MS_*` flag (0: the default, nothing to set). `suid` and `dev` are
/// not among them: a sealfs mount is always `nosuid,nodev`.
pub const GENERIC_OPTIONS: &[(&str, libc::c_ulong)] = &[
    ("ro", libc::MS_RDONLY),
    ("rw", 0),
    ("noexec", libc::MS_NOEXEC),
    ("exec", 0),
    ("nosuid", libc::MS_NOSUID),
    ("nodev", libc::MS_NODEV),
    ("noatime", libc::MS_NOATIME),
    ("atime", 0),
    ("relatime", libc::MS_RELATIME),
    ("strictatime", libc::MS_STRICTATIME),
    ("nodiratime", libc::MS_NODIRATIME),
    ("diratime", 0),
    ("sync", libc::MS_SYNCHRONOUS),
    ("async", 0),
    ("dirsync", libc::MS_DIRSYNC),
];

/// The type a sealfs mount shows in /proc/mounts (`findmnt -t fuse.sealfs`).
pub const FSTYPE: &str = "fuse.sealfs";

/// Mounts `/dev/fuse` at `mp` with mount(2) itself (as root), so the type
/// is [`FSTYPE`] and the generic options are honoured (fuser's own mount
/// call says plain `fuse`). Returns the channel's descriptor, or `None`
/// when mount(2) is not permitted (not root): fuser then goes through
/// fusermount3, which sets the subtype and takes the options as well.
pub fn mount_directly(
    cipherdir: &Path,
    mp: &Path,
    opts: &MountOptions,
) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(mp)?.permissions().mode() & libc::S_IFMT;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| {
            use std::os::unix::fs::MetadataExt;
            let how = std::fs::metadata("/dev/fuse").map_or_else(
                |_| "it is missing: load the fuse module (modprobe fuse)".to_string(),
                |m| {
                    format!(
                        "mode {:o}, owner uid {} gid {}: this user needs read and write access \
                         to it (e.g. the group that owns it), or mount as root",
                        m.mode() & 0o777,
                        m.uid(),
                        m.gid()
                    )
                },
            );
            std::io::Error::new(e.kind(), format!("cannot open /dev/fuse ({e}); {how}"))
        })?;
    // SAFETY: getuid/getgid have no failure mode.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode={mode:o},user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    );
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if opts.read_only {
        flags |= libc::MS_RDONLY;
    }
    for o in &opts.generic {
        if let Some((_, f)) = GENERIC_OPTIONS.iter().find(|(n, _)| n == o) {
            flags |= f;
        }
    }
    let c = |b: &[u8]| {
        std::ffi::CString::new(b)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let source = c(fsname(cipherdir).as_bytes())?;
    let target = c(mp.as_os_str().as_bytes())?;
    let fstype = c(FSTYPE.as_bytes())?;
    let data = c(data.as_bytes())?;
    // SAFETY: valid C strings; mount(2) reads them only.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(dev.into()))
}

/// When the mount was last used and how many files and directories are
/// open through it, for unmounting an unused mount (`sealfs mount --idle`).
#[derive(Debug)]
pub struct Activity {
    pub(super) epoch: Instant,
    /// Milliseconds after `epoch` of the last request.
    pub(super) last_ms: AtomicU64,
    /// Open file and directory handles.
    pub(super) open: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            open: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether nothing is open and no request came for at least `d`.
    /// Requests that do not mean use (the kernel's `forget`, `statfs` as
    /// `df` sends it) do not count.
    pub fn idle_for(&self, d: Duration) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        self.open.load(Ordering::Relaxed) == 0 && now.saturating_sub(last) >= d.as_millis() as u64
    }
}

/// Raises the kernel's readahead for the mount at `mountpoint` to `kb` KiB
/// (default 128 KiB), so a sequential read arrives as 1 MiB requests instead
/// of 128 KiB ones. Reads /proc/self/mountinfo (a stat of the mount point
/// would wait for this very daemon); needs root, else it does nothing.
pub fn raise_readahead(mountpoint: &Path, kb: u32) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let want = mountpoint.to_string_lossy();
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() > 4 && f[4] == want && line.contains(" - fuse") {
            let path = format!("/sys/class/bdi/{}/read_ahead_kb", f[2]);
            if let Err(e) = std::fs::write(&path, format!("{kb}\n")) {
                tracing::debug!("readahead not raised ({path}): {e}");
            }
        }
    }
}

/// The display name of a mount in /proc/mounts.
pub fn fsname(cipherdir: &Path) -> String {
    format!("sealfs:{}", cipherdir.display())
}

/// Builds the fuser configuration for a mount.
pub fn fuser_config(cipherdir: &Path, opts: &MountOptions) -> fuser::Config {
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        fuser::MountOption::FSName(fsname(cipherdir)),
        fuser::MountOption::Subtype("sealfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if opts.read_only {
        c.mount_options.push(fuser::MountOption::RO);
    }
    // Through fusermount3 (not root): it takes the generic options by name.
    for o in &opts.generic {
        let known = match o.as_str() {
            "ro" => Some(fuser::MountOption::RO),
            "noexec" => Some(fuser::MountOption::NoExec),
            "noatime" => Some(fuser::MountOption::NoAtime),
            "sync" => Some(fuser::MountOption::Sync),
            "dirsync" => Some(fuser::MountOption::DirSync),
            // Already there, or the default.
            "nosuid" | "nodev" | "rw" | "exec" | "atime" | "async" | "diratime" => None,
            other => Some(fuser::MountOption::CUSTOM(other.to_string())),
        };
        if let Some(k) = known.filter(|k| !c.mount_options.contains(k)) {
            c.mount_options.push(k);
        }
    }
    c.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    c.n_threads = Some(opts.threads.max(1));
    c.clone_fd = opts.threads > 1;
    c
}

/// What the mount asks of the kernel at init: the writeback cache, parallel
/// directory operations and READDIRPLUS (where the kernel offers them),
/// 1 MiB writes and readahead. With extended attributes (`xattrs`) also:
/// * FUSE_POSIX_ACL: the kernel enforces ACLs itself (with
///   default_permissions), asking for `system.posix_acl_*` as needed;
/// * FUSE_DONT_MASK: create, mkdir and mknod bring the mode and the umask
///   apart, since the umask does not apply under a default ACL;
/// * FUSE_HANDLE_KILLPRIV_V2: the daemon clears set-ID bits and file
///   capabilities on write, truncate and chown, so the kernel marks an
///   inode without privileges S_NOSEC after one `security.capability`
///   probe and stops asking before every write (until its attributes are
///   refreshed).
///
/// In shared-storage mode (`shared`) no writeback cache: every write
/// reaches the daemon (and the backing file) before it returns, so what a
/// host closed is on the shared storage for the next open elsewhere.
pub(super) fn ask_kernel(config: &mut fuser::KernelConfig, xattrs: bool, shared: bool) {
    use fuser::InitFlags;
    let mut want = InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_READDIRPLUS_AUTO;
    if !shared {
        want |= InitFlags::FUSE_WRITEBACK_CACHE;
    }
    if xattrs {
        want |= InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
    }
    let want = want & config.capabilities();
    if let Err(missing) = config.add_capabilities(want) {
        tracing::info!("kernel lacks capabilities {missing:?}");
    }
    let _ = config.set_max_write(1 << 20);
    let _ = config.set_max_readahead(1 << 20);
}
