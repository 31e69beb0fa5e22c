//! Mounting from the library: [`Mount::builder`] assembles everything a
//! mount is (the unlocked volume, its grant store and audit log, the FUSE
//! session, the control socket, the key schedules and grant expiry, the
//! idle unmount) and hands back a [`MountHandle`]. `sealfs mount` is this
//! builder plus argument parsing, daemonizing and printing.
//!
//! ```no_run
//! use sealfs::daemon::Mount;
//! use sealfs::UnlockSecret;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let secret = UnlockSecret::from_passfile("/root/.vault-pass".as_ref())?;
//! let mount = Mount::builder("/srv/vault.enc", "/mnt/vault")
//!     .secret(secret)
//!     .ctl_socket("/run/vault.sock")
//!     .mount()?;
//! std::fs::write("/mnt/vault/hello.txt", "hi")?;
//! mount.unmount()?;
//! # Ok(()) }
//! ```
//!
//! Two steps, for a caller that forks in between (the daemon does, and a
//! process must fork before it starts threads): [`MountBuilder::open`]
//! checks the paths and unlocks the volume without starting any thread;
//! [`OpenedMount::start`] does the rest.
//!
//! Owns: the order of assembly (what must exist before what, and which
//! threads may start when), the mount's threads (session, timers, idle
//! watch, signal watch) and their end, and the glue between layers that
//! must not know each other (the FUSE layer's cache control as the key
//! service's [`MountHooks`]).
//! Must never: hold key policy (that is [`crate::kms`]), translate kernel
//! requests (that is [`crate::fs`]), parse control requests (that is
//! [`crate::ctl`]), fork, or print (the binary does both).

pub mod mounts;
mod threads;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ctl::{self, ControlContext, ControlServer};
use crate::format::host_id::HostId;
use crate::fs::{fuser_config, CacheControl, MountOptions, SealFs};
use crate::keyring::{Unlock, UnlockSecret};
use crate::kms::anchor::AcceptedRollback;
use crate::kms::{KeyError, KeyService, MountHooks, OnMount};
use crate::policy::audit::{AuditLog, AuditStream, DEFAULT_SEGMENT_BYTES};
use crate::policy::grants::GrantStore;
use crate::policy::AccessControl;
use crate::volume::{SharedStorage, Volume, VolumeError};
use mounts::Unmounter;
pub use threads::raise_fd_limit;
use threads::Timers;

impl MountHooks for CacheControl {
    fn drop_cached_file_data(&self) {
        self.invalidate_file_data();
    }
}

/// Why a mount could not be made, or ended badly. The messages are
/// `sealfs mount`'s.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// CIPHERDIR holds no volume.
    #[error("{} is not a sealfs volume (no sealfs.toml); create one with 'sealfs init'", .0.display())]
    NotAVolume(PathBuf),
    /// The mount point is missing, not a directory, or not empty.
    #[error("{0}")]
    MountPoint(String),
    /// The unlock secret could not be had.
    #[error("{0}")]
    Secret(String),
    /// The volume could not be opened (wrong secret, damaged, in use, …).
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A path could not be resolved.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A part of the mount could not be set up (nothing is left mounted).
    #[error("{0}")]
    Start(String),
    /// The FUSE session ended with an error.
    #[error("session ended with error: {0}")]
    Session(std::io::Error),
    /// Key policy refused the mount: a rollback was detected, or the KMS
    /// behind the keyslot refused or could not be reached.
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// Where the unlock providers come from.
enum SecretSource {
    Given(Unlock),
    /// Asked for only once the paths are checked (no passphrase prompt for
    /// a mount that cannot happen).
    Ask(Box<dyn FnOnce() -> Result<Unlock, String>>),
}

/// Namespace of [`Mount::builder`].
pub struct Mount;

impl Mount {
    /// A mount of the volume in `cipherdir` on `mountpoint` (an empty
    /// directory), read-write, owner-only, audited, with the default number
    /// of request threads. Set the secret with [`MountBuilder::secret`].
    pub fn builder(cipherdir: impl Into<PathBuf>, mountpoint: impl Into<PathBuf>) -> MountBuilder {
        MountBuilder {
            cipherdir: cipherdir.into(),
            mountpoint: mountpoint.into(),
            secret: None,
            read_only: false,
            allow_other: false,
            threads: None,
            ctl_socket: None,
            audit: true,
            audit_host: None,
            idle: None,
            unmount_on_signal: false,
            lock_memory: false,
            generic: Vec::new(),
            readahead_kb: Some(1024),
            accept_rollback: false,
            enospc_margin: None,
            shared: None,
        }
    }
}

/// The choices of one mount. See [`Mount::builder`].
pub struct MountBuilder {
    cipherdir: PathBuf,
    mountpoint: PathBuf,
    secret: Option<SecretSource>,
    read_only: bool,
    allow_other: bool,
    threads: Option<usize>,
    ctl_socket: Option<PathBuf>,
    audit: bool,
    audit_host: Option<HostId>,
    idle: Option<Duration>,
    unmount_on_signal: bool,
    lock_memory: bool,
    generic: Vec<String>,
    readahead_kb: Option<u32>,
    accept_rollback: bool,
    enospc_margin: Option<u64>,
    shared: Option<SharedStorage>,
}

/// Request-serving threads when none are chosen: twice the cores, 4 to 16,
/// so that a thread waiting on the disk or in fsync holds up no other request.
pub fn default_request_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).clamp(4, 16)
}

fn check_mountpoint(mp: &Path) -> Result<(), MountError> {
    let bad =
        |e: std::io::Error| MountError::MountPoint(format!("MOUNTPOINT {}: {e}", mp.display()));
    let md = std::fs::metadata(mp).map_err(bad)?;
    if !md.is_dir() {
        return Err(MountError::MountPoint(format!(
            "MOUNTPOINT {} is not a directory",
            mp.display()
        )));
    }
    if let Some(top) = mp.canonicalize().ok().and_then(|c| mounts::top_at(&c)) {
        if top.is_sealfs() {
            return Err(MountError::MountPoint(format!(
                "MOUNTPOINT {} is already a sealfs mount (of {}): unmount it first",
                mp.display(),
                top.cipherdir().unwrap_or_default().display()
            )));
        }
    }
    let mut rd = std::fs::read_dir(mp).map_err(bad)?;
    if rd.next().is_some() {
        return Err(MountError::MountPoint(format!(
            "MOUNTPOINT {} is not empty",
            mp.display()
        )));
    }
    Ok(())
}

impl MountBuilder {
    /// Unlocks with `secret` (a passphrase or a key file).
    pub fn secret(self, secret: UnlockSecret) -> Self {
        self.unlock(Unlock::new().with(secret))
    }

    /// Unlocks with the first of these providers that opens a keyslot.
    pub fn unlock(mut self, unlock: Unlock) -> Self {
        self.secret = Some(SecretSource::Given(unlock));
        self
    }

    /// Unlocks with what `ask` returns, called once the volume and the
    /// mount point have been checked (an error is reported as is).
    pub fn secret_with(self, ask: impl FnOnce() -> Result<UnlockSecret, String> + 'static) -> Self {
        self.unlock_with(move || ask().map(|s| Unlock::new().with(s)))
    }

    /// Like [`MountBuilder::secret_with`], for any providers.
    pub fn unlock_with(mut self, ask: impl FnOnce() -> Result<Unlock, String> + 'static) -> Self {
        self.secret = Some(SecretSource::Ask(Box::new(ask)));
        self
    }

    /// Mounts even when the keyring is older than the audit log or the KMS
    /// recorded (a rollback); the acceptance is recorded in the audit log.
    pub fn accept_rollback(mut self, yes: bool) -> Self {
        self.accept_rollback = yes;
        self
    }

    /// Mounts read-only (no change, no key operation, no schedule).
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// The kernel's generic mount options (`noexec`, `noatime`, …: each
    /// one of [`crate::fs::GENERIC_OPTIONS`]), passed through.
    pub fn generic_options(mut self, opts: Vec<String>) -> Self {
        self.generic = opts;
        self
    }

    /// Lets other users through (grants decide what they reach; the
    /// control socket is then mode 0666 so grantees can retire grants).
    pub fn allow_other(mut self, yes: bool) -> Self {
        self.allow_other = yes;
        self
    }

    /// Request-serving threads (default [`default_request_threads`]).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// The control socket's path (default [`ctl::default_socket_path`] of
    /// the mount point).
    pub fn ctl_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.ctl_socket = Some(path.into());
        self
    }

    /// Keeps the audit log of key uses (default on; without it grants
    /// still apply, unrecorded).
    pub fn audit(mut self, yes: bool) -> Self {
        self.audit = yes;
        self
    }

    /// Appends the audit log to `host`'s own stream
    /// (`sealfs.audit/hosts/<HOST>/`, docs/FORMAT.md §12.4) instead of the
    /// volume's local stream: what each daemon on shared storage does.
    pub fn audit_host(mut self, host: Option<HostId>) -> Self {
        self.audit_host = host;
        self
    }

    /// Unmounts once nothing is open and no request came for `d`.
    pub fn idle(mut self, d: Option<Duration>) -> Self {
        self.idle = d;
        self
    }

    /// Unmounts on SIGINT, SIGTERM and SIGHUP (lazily if still busy after a
    /// second). This blocks those signals in every thread the mount starts
    /// and in the caller's: meant for a process that serves one mount.
    pub fn unmount_on_signal(mut self, yes: bool) -> Self {
        self.unmount_on_signal = yes;
        self
    }

    /// Locks the process's memory, so keys never reach swap (best effort,
    /// process-wide; see [`crate::hardening::lock_memory`]).
    pub fn lock_memory(mut self, yes: bool) -> Self {
        self.lock_memory = yes;
        self
    }

    /// The kernel's readahead for the mount in KiB (default 1024; `None`
    /// leaves the kernel's 128).
    pub fn readahead_kb(mut self, kb: Option<u32>) -> Self {
        self.readahead_kb = kb;
        self
    }

    /// Free space in CIPHERDIR below which files are opened write-through,
    /// so a full disk shows at `write()` (default: twice the kernel's dirty
    /// limit for the mount; see [`crate::fs::SpaceGuard`]).
    pub fn enospc_margin(mut self, bytes: Option<u64>) -> Self {
        self.enospc_margin = bytes;
        self
    }

    /// Shared-storage mode (`Some`): other daemons, on this or other hosts,
    /// may have the same cipher directory mounted in this mode at once;
    /// every change of a shared file is made under its lock on the fresh
    /// state, others' changes show within `refresh`, and the kernel's
    /// caches are bounded by it (close-to-open consistency, README "Shared
    /// storage"). `None` (default): this daemon is the volume's only
    /// writer. A volume whose config sets `shared_storage = true` refuses
    /// a mount without it.
    pub fn shared_storage(mut self, shared: Option<SharedStorage>) -> Self {
        self.shared = shared;
        self
    }

    /// Checks the volume and the mount point, gets the secret and unlocks
    /// the volume (taking its lock when read-write). Starts no thread.
    pub fn open(self) -> Result<OpenedMount, MountError> {
        let cipherdir = self.cipherdir.as_path();
        if !cipherdir.is_dir() || !Volume::looks_like_volume(cipherdir) {
            return Err(MountError::NotAVolume(cipherdir.to_path_buf()));
        }
        check_mountpoint(&self.mountpoint)?;
        if self.shared.is_none() && Volume::read_config(cipherdir)?.shared_storage {
            return Err(VolumeError::SharedStorageRequired(cipherdir.to_path_buf()).into());
        }
        let canonical_mp = self
            .mountpoint
            .canonicalize()
            .map_err(|e| MountError::MountPoint(e.to_string()))?;
        let socket = self
            .ctl_socket
            .clone()
            .unwrap_or_else(|| ctl::default_socket_path(&canonical_mp));
        let secret = match self.secret {
            Some(SecretSource::Given(s)) => s,
            Some(SecretSource::Ask(ask)) => ask().map_err(MountError::Secret)?,
            None => return Err(MountError::Secret("no unlock secret given".into())),
        };
        let vol = Arc::new(Volume::open_for_mount(
            cipherdir,
            &secret,
            self.read_only,
            self.shared.clone(),
        )?);
        drop(secret);
        // Before the audit log opens (it would start a new one where the
        // old is gone, and append its recovery notes).
        let accepted = crate::kms::anchor::check_or_refuse(&vol, self.accept_rollback)?;
        raise_fd_limit();
        let canonical_cd = cipherdir.canonicalize()?;
        Ok(OpenedMount {
            vol,
            cipherdir: canonical_cd,
            mountpoint: self.mountpoint,
            canonical_mp,
            socket,
            options: MountOptions {
                allow_other: self.allow_other,
                read_only: self.read_only,
                threads: self.threads.unwrap_or_else(default_request_threads),
                generic: self.generic.clone(),
                enospc_margin: self.enospc_margin,
            },
            audit: self.audit,
            // On shared storage every daemon appends to its own stream.
            audit_host: self
                .audit_host
                .clone()
                .or_else(|| self.shared.as_ref().map(|s| s.host_id.clone())),
            idle: self.idle,
            unmount_on_signal: self.unmount_on_signal,
            lock_memory: self.lock_memory,
            readahead_kb: self.readahead_kb,
            accepted,
        })
    }

    /// [`MountBuilder::open`], then [`OpenedMount::start`].
    pub fn mount(self) -> Result<MountHandle, MountError> {
        self.open()?.start()
    }
}

/// An unlocked volume about to be mounted: no thread runs yet, so the
/// process may still fork. See [`OpenedMount::start`].
pub struct OpenedMount {
    vol: Arc<Volume>,
    cipherdir: PathBuf,
    mountpoint: PathBuf,
    canonical_mp: PathBuf,
    socket: PathBuf,
    options: MountOptions,
    audit: bool,
    audit_host: Option<HostId>,
    idle: Option<Duration>,
    unmount_on_signal: bool,
    lock_memory: bool,
    readahead_kb: Option<u32>,
    accepted: Option<AcceptedRollback>,
}

/// Key policy on behalf of the daemon itself (schedules, the anchors at
/// mount and unmount).
pub(crate) fn daemon_keys<'a>(
    vol: &'a Volume,
    access: &'a AccessControl,
    hooks: &'a dyn MountHooks,
    census: &'a parking_lot::Mutex<Option<crate::volume::walk::Census>>,
) -> KeyService<'a> {
    KeyService::on_mount(
        vol,
        OnMount {
            access,
            actor: AuditLog::daemon_record().principal,
            hooks,
            last_census: census,
        },
    )
}

/// How the unlock is named in the audit log and the log: the slot and its
/// public description, never a secret.
fn unlocked_detail(vol: &Volume) -> Option<String> {
    let kr = vol.keyring().read();
    kr.unlocked_by().map(|u| match u.slot {
        Some(s) => format!(
            "unlocked by keyslot {s} ({}: {})",
            u.provider, u.description
        ),
        None => format!("unlocked by the {} (layout-1 keyring)", u.provider),
    })
}

impl OpenedMount {
    /// The cipher directory (canonical).
    pub fn cipherdir(&self) -> &Path {
        &self.cipherdir
    }

    /// The mount point, as given.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Where the control socket will listen.
    pub fn ctl_socket(&self) -> &Path {
        &self.socket
    }

    /// What the mount should warn about before it starts: bookkeeping
    /// files other users can read ([`Volume::loose_permissions`]).
    pub fn warnings(&self) -> Vec<String> {
        self.vol.loose_permissions()
    }

    /// Mounts: opens the grant store and the audit log, starts the FUSE
    /// session, the control socket, the key schedules, grant expiry and
    /// the idle watch. On error nothing stays mounted.
    pub fn start(self) -> Result<MountHandle, MountError> {
        let start = |what: String| MountError::Start(what);
        // Memory locks do not survive fork: taken here, in the serving process.
        if self.lock_memory {
            match crate::hardening::lock_memory() {
                crate::hardening::MemoryLock::Locked => tracing::debug!("memory locked"),
                other => tracing::warn!("{other}"),
            }
        }
        // Before anything starts a thread (the grant store, the audit log's
        // syncer, SealFs's release queue): a thread started with SIGTERM
        // unblocked would take the signal's default action (kill the
        // daemon, leaving a dead mount) instead of unmounting.
        if self.unmount_on_signal {
            threads::block_termination_signals();
        }
        let vol = self.vol;
        // SAFETY: geteuid has no failure mode.
        let owner = unsafe { libc::geteuid() };
        let grants = GrantStore::open(vol.clone())
            .map_err(|e| start(format!("cannot open the grant store: {e}")))?;
        let audit = if self.audit {
            Some(
                AuditLog::open_stream(
                    vol.clone(),
                    DEFAULT_SEGMENT_BYTES,
                    self.audit_host
                        .map_or(AuditStream::Local, AuditStream::Host),
                )
                .map_err(|e| {
                    start(format!(
                        "cannot open the audit log: {e} (mount with --no-audit to go without one)"
                    ))
                })?,
            )
        } else {
            None
        };
        let access = Arc::new(AccessControl::new(owner, Some(Arc::new(grants)), audit));
        // Before the mount is visible: the acceptance of a rollback, the
        // slot that unlocked the volume, and the keyring stored anchored at
        // the log's head now.
        {
            struct NoCache;
            impl MountHooks for NoCache {
                fn drop_cached_file_data(&self) {}
            }
            let census = parking_lot::Mutex::new(None);
            let keys = daemon_keys(&vol, &access, &NoCache, &census);
            if let Some(a) = &self.accepted {
                keys.accept_rollback(a)
                    .map_err(|e| start(format!("cannot record the accepted rollback: {e}")))?;
            }
            // Best effort (a full disk must not stop a mount): the anchor in
            // place stays valid, it only covers fewer records.
            if let Err(e) = keys.anchor_here("mount", unlocked_detail(&vol)) {
                tracing::warn!("keyring not re-anchored at mount: {e}");
            }
        }
        let mut fs = SealFs::new(vol.clone(), access.clone())
            .map_err(|e| start(format!("cannot open the volume's root: {e}")))?;
        fs.set_allow_other(self.options.allow_other);
        let cache = fs.cache_control();
        let activity = fs.activity();
        fs.watch_space(self.options.enospc_margin, Some(&self.canonical_mp));
        let config = fuser_config(&self.cipherdir, &self.options);
        // As root the daemon mounts itself (type fuse.sealfs, the generic
        // options as flags); otherwise fuser goes through fusermount3.
        let direct = crate::fs::mount_directly(&self.cipherdir, &self.canonical_mp, &self.options)
            .map_err(|e| start(format!("mount failed: {e}")))?;
        let (session, unmounter) = match direct {
            Some(fd) => {
                let unmounter = Unmounter::Direct {
                    mp: self.canonical_mp.clone(),
                    source: crate::fs::fsname(&self.cipherdir).into(),
                    done: false,
                };
                let acl = config.acl;
                match fuser::Session::from_fd(fs, fd, acl, config) {
                    Ok(s) => (s, unmounter),
                    Err(e) => {
                        let mut u = unmounter;
                        let _ = u.unmount();
                        return Err(start(format!("mount failed: {e}")));
                    }
                }
            }
            None => {
                let mut s = fuser::Session::new(fs, &self.mountpoint, &config)
                    .map_err(|e| start(format!("mount failed: {e}")))?;
                let u = Unmounter::Fuser(s.unmount_callable());
                (s, u)
            }
        };
        // Crash test: a daemon that dies with the kernel mount in place
        // (the waiting `sealfs mount` must undo it).
        crate::keyring::kill_point("mounted");
        let unmount_requested = Arc::new(AtomicBool::new(false));
        let unmounter = Arc::new(parking_lot::Mutex::new(unmounter));
        // What a daemon forced out by a second signal does before it exits
        // (filled in once the mount's hooks exist).
        let last_words: threads::LastWords = Arc::new(std::sync::OnceLock::new());
        if self.unmount_on_signal {
            threads::unmount_on_signal(
                unmounter.clone(),
                self.canonical_mp.clone(),
                unmount_requested.clone(),
                last_words.clone(),
            );
        }
        if let Some(kb) = self.readahead_kb {
            crate::fs::raise_readahead(&self.canonical_mp, kb);
        }
        cache.set_notifier(session.notifier());
        let hooks: Arc<dyn MountHooks> = Arc::new(cache);
        {
            let (vol, access, hooks) = (vol.clone(), access.clone(), hooks.clone());
            let _ = last_words.set(Box::new(move || {
                let census = parking_lot::Mutex::new(None);
                let keys = daemon_keys(&vol, &access, &*hooks, &census);
                if let Err(e) =
                    keys.anchor_here("unmount", Some("forced by a second signal".into()))
                {
                    tracing::warn!("keyring not anchored at the forced end: {e}");
                }
            }));
        }
        if let Some(d) = unlocked_detail(&vol) {
            tracing::info!("{d}");
        }
        let ctl_ctx = ControlContext::new(
            vol.clone(),
            hooks.clone(),
            self.canonical_mp.clone(),
            owner,
            access.clone(),
            self.options.allow_other,
        );
        let server = match ctl::serve(&self.socket, ctl_ctx) {
            Ok(s) => s,
            Err(e) => {
                let _ = unmounter.lock().unmount();
                return Err(start(format!(
                    "control socket {}: {e}",
                    self.socket.display()
                )));
            }
        };
        let timers = Timers::start(vol.clone(), access.clone(), hooks.clone());
        crate::metrics::mark_start();
        tracing::info!(
            "mounted {} on {}; control socket {}",
            self.cipherdir.display(),
            self.canonical_mp.display(),
            self.socket.display()
        );
        let idle = self.idle.map(|idle| {
            threads::unmount_when_idle(
                activity,
                idle,
                self.canonical_mp.clone(),
                unmount_requested.clone(),
                timers.stopped(),
            )
        });
        let session = std::thread::Builder::new()
            .name("sealfs-session".into())
            .spawn(move || session.run())
            .map_err(|e| {
                let _ = unmounter.lock().unmount();
                start(format!("mount failed: {e}"))
            })?;
        Ok(MountHandle {
            vol,
            access,
            hooks,
            session: Some(session),
            unmounter,
            unmount_requested,
            server: Some(server),
            timers,
            idle,
            cipherdir: self.cipherdir,
            mountpoint: self.mountpoint,
            canonical_mp: self.canonical_mp,
        })
    }
}

/// A live mount. [`MountHandle::wait`] until it ends (someone unmounts
/// it, a signal or `idle`), or [`MountHandle::unmount`] it; dropping the
/// handle unmounts too.
pub struct MountHandle {
    vol: Arc<Volume>,
    access: Arc<AccessControl>,
    hooks: Arc<dyn MountHooks>,
    session: Option<JoinHandle<std::io::Result<()>>>,
    unmounter: Arc<parking_lot::Mutex<Unmounter>>,
    unmount_requested: Arc<AtomicBool>,
    server: Option<ControlServer>,
    timers: Timers,
    idle: Option<JoinHandle<()>>,
    cipherdir: PathBuf,
    mountpoint: PathBuf,
    canonical_mp: PathBuf,
}

impl MountHandle {
    /// The cipher directory (canonical).
    pub fn cipherdir(&self) -> &Path {
        &self.cipherdir
    }

    /// The mount point, as given.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The control socket (speak [`crate::ctl::protocol`] to it, e.g. with
    /// [`crate::ctl::client::call`]).
    pub fn ctl_socket(&self) -> &Path {
        self.server.as_ref().map_or(Path::new(""), |s| s.path())
    }

    /// Waits until the mount ends, then stops its threads and removes the
    /// control socket. An end the mount itself asked for (signal, idle,
    /// [`MountHandle::unmount`]) is a normal end.
    pub fn wait(mut self) -> Result<(), MountError> {
        self.finish()
    }

    /// Unmounts (retrying for a second while the mount is busy, then
    /// detaching it lazily, as `umount -l` does) and waits for the end.
    pub fn unmount(mut self) -> Result<(), MountError> {
        threads::end_mount(&self.unmounter, &self.canonical_mp, &self.unmount_requested);
        self.finish()
    }

    fn finish(&mut self) -> Result<(), MountError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let r = session
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the session thread panicked")));
        self.timers.stop();
        if let Some(idle) = self.idle.take() {
            let _ = idle.join();
        }
        self.server = None;
        // The keyring anchored at the log's last record: whatever is cut
        // from the log's end after this is found at the next mount.
        let census = parking_lot::Mutex::new(None);
        let keys = daemon_keys(&self.vol, &self.access, &*self.hooks, &census);
        if let Err(e) = keys.anchor_here("unmount", None) {
            tracing::warn!("keyring not anchored at unmount: {e}");
        }
        match r {
            Err(e)
                if e.raw_os_error() == Some(libc::ECONNABORTED)
                    && self.unmount_requested.load(Ordering::SeqCst) =>
            {
                tracing::info!("session ended after unmount ({e})");
                Ok(())
            }
            r => r.map_err(MountError::Session),
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if self.session.is_some() {
            threads::end_mount(&self.unmounter, &self.canonical_mp, &self.unmount_requested);
            let _ = self.finish();
        }
    }
}
