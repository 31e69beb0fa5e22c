//! The threads of a mount besides the FUSE session's: the key schedules
//! and grant expiry (the timers), the idle watch, the signal watch, and the
//! unmount calls they make.
//!
//! Owns: when each of them runs and how it ends (timers and the idle watch
//! end when the mount ends; the signal watch waits for its signal).
//! Must never: hold a key-policy rule (the schedules are
//! [`crate::kms::KeyService::run_schedules`], run on behalf of the daemon so they are
//! audited like any key change) or unmount lazily unless asked to end the
//! mount (a signal, [`super::MountHandle::unmount`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::fs::Activity;
use crate::keyring::now_secs;
use crate::kms::MountHooks;
use crate::policy::audit::AuditLog;
use crate::policy::{AccessControl, Event};
use crate::volume::Volume;

/// How often the key schedules are looked at (automatic rotation, due
/// destructions; docs/CONTROL.md §9).
const SCHEDULE_TICK: Duration = Duration::from_secs(5);
/// How often expired grants are ended.
const GRANT_EXPIRY_TICK: Duration = Duration::from_millis(500);
/// How often the KMS behind the unlocking keyslot is asked whether it
/// still lets the volume unlock (its answer shows in `ctl status`; the
/// mount keeps working from memory whatever it says).
const KMS_CHECK_TICK: Duration = Duration::from_secs(60);

/// Raises the soft limit on open files to the hard limit (a mount holds one
/// descriptor per inode the kernel knows, fsck one per directory level).
pub fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 && rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: valid pointer.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    }
}

/// A stop signal a sleeping thread wakes up for.
#[derive(Default)]
pub(super) struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Stop {
    /// Sleeps for `d` or until stopped; whether stopped.
    pub(super) fn wait(&self, d: Duration) -> bool {
        let mut s = self.stopped.lock();
        if !*s {
            self.cv.wait_for(&mut s, d);
        }
        *s
    }

    fn stop(&self) {
        *self.stopped.lock() = true;
        self.cv.notify_all();
    }
}

/// The key schedules and grant expiry of one mount.
pub(super) struct Timers {
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
}

impl Timers {
    /// Starts both: the schedules run at once (a rotation due while the
    /// volume was unmounted happens at mount) and then every few seconds.
    pub(super) fn start(
        vol: Arc<Volume>,
        access: Arc<AccessControl>,
        hooks: Arc<dyn MountHooks>,
    ) -> Timers {
        let stop = Arc::new(Stop::default());
        let mut threads = Vec::new();
        let s = stop.clone();
        let authority = vol.keyring().read().authority().cloned();
        let (v, a, h) = (vol.clone(), access.clone(), hooks.clone());
        // Shared storage: the schedules (and grant expiry's stores) run on
        // the one host holding the lease, renewed every tick.
        let shared = vol.shared().is_some();
        let lease = Arc::new(AtomicBool::new(!shared));
        let held = lease.clone();
        let tick = if shared {
            crate::volume::shared::LEASE_TIME / 3
        } else {
            SCHEDULE_TICK
        };
        threads.extend(
            std::thread::Builder::new()
                .name("sealfs-schedule".into())
                .spawn(move || loop {
                    if shared {
                        follow_lease(&v, &held);
                    }
                    if held.load(Ordering::Acquire) {
                        run_schedules(&v, &a, &*h);
                    }
                    if s.wait(tick) {
                        if shared && held.load(Ordering::Acquire) {
                            if let Err(e) = v.release_schedule_lease() {
                                tracing::warn!("schedule lease not released: {e}");
                            }
                        }
                        return;
                    }
                })
                .ok(),
        );
        if let Some(period) = vol.shared().map(|s| s.refresh) {
            let (s, v, a, h) = (stop.clone(), vol.clone(), access.clone(), hooks.clone());
            threads.extend(
                std::thread::Builder::new()
                    .name("sealfs-refresh".into())
                    .spawn(move || {
                        while !s.wait(period) {
                            follow_other_hosts(&v, &a, &*h);
                        }
                    })
                    .ok(),
            );
        }
        if let Some(kms) = authority {
            let s = stop.clone();
            threads.extend(
                std::thread::Builder::new()
                    .name("sealfs-kms".into())
                    .spawn(move || {
                        while !s.wait(KMS_CHECK_TICK) {
                            if let Err(e) = kms.check() {
                                tracing::warn!(
                                    "the KMS no longer lets this volume unlock ({e}); the mount keeps working from memory until unmounted"
                                );
                            }
                        }
                    })
                    .ok(),
            );
        }
        let s = stop.clone();
        threads.extend(
            std::thread::Builder::new()
                .name("sealfs-grants".into())
                .spawn(move || loop {
                    if lease.load(Ordering::Acquire) {
                        expire_grants(&access, &*hooks);
                    }
                    if s.wait(GRANT_EXPIRY_TICK) {
                        return;
                    }
                })
                .ok(),
        );
        Timers { stop, threads }
    }

    /// The stop signal (shared with the idle watch).
    pub(super) fn stopped(&self) -> Arc<Stop> {
        self.stop.clone()
    }

    /// Stops the timers and waits for them.
    pub(super) fn stop(&mut self) {
        self.stop.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One round of the key schedules on behalf of the daemon.
fn run_schedules(vol: &Volume, access: &AccessControl, hooks: &dyn MountHooks) {
    let census = Mutex::new(None);
    let keys = super::daemon_keys(vol, access, hooks, &census);
    match keys.run_schedules(now_secs()) {
        Ok(done) => {
            for d in done {
                tracing::info!("schedule: {d}");
            }
        }
        Err(e) => tracing::warn!("scheduled key job failed: {e}"),
    }
}

/// Shared storage: takes or renews the schedule lease into `held` (a
/// lease that cannot be reached counts as lost); when held, the keyring
/// others stored is followed before the schedules look at it.
fn follow_lease(vol: &Volume, held: &AtomicBool) {
    let now = match vol.take_schedule_lease() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("schedule lease not renewed: {e}");
            false
        }
    };
    let host = vol
        .shared()
        .map(|s| s.host_id.to_string())
        .unwrap_or_default();
    if held.swap(now, Ordering::AcqRel) != now {
        if now {
            tracing::info!("schedule lease taken: host {host} runs the key schedules");
        } else {
            tracing::info!(
                "schedule lease held by another host; host {host} leaves the key schedules to it"
            );
        }
    }
    if now {
        if let Err(e) = vol.refresh_keyring() {
            tracing::warn!("keyring of other hosts not followed: {e}");
        }
    }
}

/// Shared storage: follows the keyring and the grant store other hosts
/// stored; cached file data goes when keys or grants were taken away.
fn follow_other_hosts(vol: &Volume, access: &AccessControl, hooks: &dyn MountHooks) {
    let mut drop_data = false;
    match vol.refresh_keyring() {
        Ok(true) => {
            tracing::debug!("followed a keyring another host stored");
            // A disable, a disabled key or a version going away: nothing
            // read before may be served from the kernel's cache any more.
            drop_data |= vol.is_disabled() || vol.keyring().read().some_key_restricted();
        }
        Ok(false) => {}
        Err(e) => tracing::warn!("keyring of other hosts not followed: {e}"),
    }
    if let Some(store) = access.grant_store() {
        match store.refresh() {
            Ok(ended) => drop_data |= ended,
            Err(e) => tracing::warn!("grants of other hosts not followed: {e}"),
        }
    }
    if drop_data {
        hooks.drop_cached_file_data();
    }
}

/// Ends grants whose expiry passed (at most a tick late; handles check the
/// expiry themselves on every use, so this only records the end, stores
/// it, and drops cached data).
fn expire_grants(access: &AccessControl, hooks: &dyn MountHooks) {
    let Some(store) = access.grant_store() else {
        return;
    };
    let expired = store.expire_due(now_secs());
    for g in &expired {
        let _ = access.record_principal(
            AuditLog::daemon_record().principal,
            Event {
                grant: Some(&g.id),
                ..Event::ok("grant_expired", None)
            },
        );
    }
    if !expired.is_empty() {
        hooks.drop_cached_file_data();
    }
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the termination signals in this thread, so every thread started
/// later (fuser's loops, the record flusher) inherits the mask and only the
/// thread of [`unmount_on_signal`] receives them. Call before `Session::new`.
pub(super) fn block_termination_signals() {
    let set = termination_signals();
    // SAFETY: valid signal set; only changes this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Starts the thread that waits for SIGINT/SIGTERM/SIGHUP and then ends
/// the mount ([`end_mount`]). A busy mount is detached and served until its
/// files close; the daemon says which processes hold it, and a second
/// signal ends it at once (the FUSE connection is aborted: the open files
/// get errors, the daemon exits, and the volume can be mounted again).
/// What the daemon does before a forced exit (the keyring anchored at the
/// log's end, as a normal unmount does), set once the mount is up.
pub(super) type LastWords = Arc<std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>>;

pub(super) fn unmount_on_signal(
    unmounter: Arc<Mutex<super::mounts::Unmounter>>,
    mp: PathBuf,
    requested: Arc<AtomicBool>,
    last_words: LastWords,
) {
    std::thread::spawn(move || {
        let set = termination_signals();
        let mut sig = 0;
        // SAFETY: valid pointers; the signals are blocked in every thread.
        unsafe { libc::sigwait(&set, &mut sig) };
        tracing::info!("signal {sig}: unmounting");
        // Before detaching: a detached mount's paths no longer start with `mp`.
        let connection = fuse_connection(&mp);
        let holders = super::mounts::holders(&mp);
        if !holders.is_empty() {
            let list: Vec<String> = holders
                .iter()
                .map(|h| format!("pid {} ({}, {} open)", h.pid, h.command, h.open))
                .collect();
            tracing::warn!(
                "{} is busy, held by {}: it is detached and served until those files close; \
                 send SIGINT or SIGTERM again (pid {}) to end it now",
                mp.display(),
                list.join(", "),
                std::process::id()
            );
        }
        end_mount(&unmounter, &mp, &requested);
        // SAFETY: as above.
        unsafe { libc::sigwait(&set, &mut sig) };
        tracing::warn!("signal {sig} again: ending the mount now (open files get errors)");
        let aborted = connection.is_some_and(|c| {
            std::fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), b"1").is_ok()
        });
        if !aborted {
            // Not root (the abort file is root's): closing /dev/fuse by
            // exiting aborts the connection too. The keyring is anchored at
            // the log's end first, as a normal unmount does.
            if let Some(f) = last_words.get() {
                f();
            }
            tracing::warn!("exiting without waiting for the open files");
            std::process::exit(1);
        }
    });
}

/// The FUSE connection number of the mount at `mp` (its device's minor
/// number, as /sys/fs/fuse/connections names it), from
/// /proc/self/mountinfo (a stat of `mp` would go through this daemon).
fn fuse_connection(mp: &Path) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mp.to_string_lossy();
    info.lines()
        .rev()
        .filter(|l| l.contains(" - fuse"))
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[4] == want).then(|| f[2].split_once(':')?.1.parse().ok())?
        })
}

/// Ends the mount at `mp`: a busy mount (a file or a working directory
/// open in it, if only for the moment a forked child holds a copy of an
/// fd) is tried again for a second and then detached lazily, as `umount -l`
/// does; the session ends when the last user is gone.
pub(super) fn end_mount(
    unmounter: &Mutex<super::mounts::Unmounter>,
    mp: &Path,
    requested: &AtomicBool,
) {
    requested.store(true, Ordering::SeqCst);
    let Err(e) = unmounter.lock().unmount() else {
        return;
    };
    tracing::info!("unmount failed ({e}); retrying");
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        match unmount_not_lazily(mp) {
            Ok(()) => return,
            // Gone already (someone else unmounted it).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(_) => {}
        }
    }
    tracing::warn!("mount point still busy: detaching it lazily");
    if let Err(e) = unmount_lazily(mp) {
        tracing::warn!("lazy unmount failed: {e}");
    }
}

/// umount2(MNT_DETACH) as root; `fusermount3 -u -z` otherwise.
fn unmount_lazily(mp: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mp.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string; umount2 has no memory effects.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let st = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "-q"])
        .arg(mp)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("fusermount3 -u -z: {st}")))
    }
}

/// Starts the idle watch: once the mount has been unused for `idle`,
/// unmount it the way `umount` would (not lazily: a busy mount stays, and
/// is tried again), which ends the session. Ends with the mount (`stop`).
pub(super) fn unmount_when_idle(
    activity: Arc<Activity>,
    idle: Duration,
    mp: PathBuf,
    requested: Arc<AtomicBool>,
    stop: Arc<Stop>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let tick = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
        loop {
            if stop.wait(tick) {
                return;
            }
            if !activity.idle_for(idle) {
                continue;
            }
            requested.store(true, Ordering::SeqCst);
            match unmount_not_lazily(&mp) {
                Ok(()) => {
                    tracing::info!("unused for {idle:?}: unmounted");
                    return;
                }
                Err(e) => tracing::info!("unused for {idle:?}, but unmount failed: {e}"),
            }
        }
    })
}

/// umount(2) as root; `fusermount3 -u` (which is not lazy either) otherwise.
fn unmount_not_lazily(mp: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mp.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string; umount2 has no memory effects.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(e);
    }
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-q")
        .arg(mp)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("fusermount3 -u: {st}")))
    }
}
