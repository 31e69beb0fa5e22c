//! `sealfs mount` (unlock, daemonize, serve until unmounted) and `sealfs
//! unmount`.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sealfs::ctl;
use sealfs::fs::{fuser_config, MountOptions, SealFs};
use sealfs::volume::Volume;

use crate::args::MountArgs;
use crate::error::{exit, CliError};
use crate::init_logging_as;
use crate::secret::read_secret;

pub(crate) fn raise_fd_limit() {
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
fn block_termination_signals() {
    let set = termination_signals();
    // SAFETY: valid signal set; only changes this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Set when the daemon itself unmounts (signal, `--idle`): the kernel may
/// then end the session with ECONNABORTED instead of ENODEV (seen after a
/// lazy unmount), which is the normal end, not an error.
static UNMOUNT_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts the thread that waits for SIGINT/SIGTERM/SIGHUP and unmounts.
/// A termination signal always ends the mount: when it is busy (a file or
/// a working directory open in it, if only for the moment a forked child
/// holds a copy of an fd), the unmount is retried for a second and then
/// done lazily, as `umount -l` does; the session ends when the last user
/// is gone. Before, a busy mount made the daemon ignore the signal.
fn unmount_on_signal(mut unmounter: fuser::SessionUnmounter, mp: PathBuf) {
    std::thread::spawn(move || {
        let set = termination_signals();
        let mut sig = 0;
        // SAFETY: valid pointers; the signals are blocked in every thread.
        unsafe { libc::sigwait(&set, &mut sig) };
        tracing::info!("signal {sig}: unmounting");
        UNMOUNT_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
        let Err(e) = unmounter.unmount() else { return };
        tracing::info!("unmount failed ({e}); retrying");
        for _ in 0..10 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            match unmount_not_lazily(&mp) {
                Ok(()) => return,
                // Gone already (someone else unmounted it).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(_) => {}
            }
        }
        tracing::warn!("mount point still busy: detaching it lazily");
        if let Err(e) = unmount_lazily(&mp) {
            tracing::warn!("lazy unmount failed: {e}");
        }
    });
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

/// Starts the thread of `--idle`: once the mount has been unused for `idle`,
/// unmount it the way `umount` would (not lazily: a busy mount stays, and
/// is tried again), which ends the session.
fn unmount_when_idle(activity: Arc<sealfs::fs::Activity>, idle: std::time::Duration, mp: PathBuf) {
    use std::time::Duration;
    std::thread::spawn(move || {
        let tick = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
        loop {
            std::thread::sleep(tick);
            if !activity.idle_for(idle) {
                continue;
            }
            UNMOUNT_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
            match unmount_not_lazily(&mp) {
                Ok(()) => {
                    tracing::info!("unused for {idle:?}: unmounted");
                    return;
                }
                Err(e) => tracing::info!("unused for {idle:?}, but unmount failed: {e}"),
            }
        }
    });
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

fn check_mountpoint(mp: &Path) -> Result<(), CliError> {
    let md = std::fs::metadata(mp).map_err(|e| {
        CliError::new(
            exit::MOUNTPOINT,
            format!("MOUNTPOINT {}: {e}", mp.display()),
        )
    })?;
    if !md.is_dir() {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!("MOUNTPOINT {} is not a directory", mp.display()),
        ));
    }
    let mut rd = std::fs::read_dir(mp).map_err(|e| {
        CliError::new(
            exit::MOUNTPOINT,
            format!("MOUNTPOINT {}: {e}", mp.display()),
        )
    })?;
    if rd.next().is_some() {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!("MOUNTPOINT {} is not empty", mp.display()),
        ));
    }
    Ok(())
}

/// Request-serving threads when `--threads` is not given.
fn default_request_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).clamp(4, 16)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn cmd_mount(a: &MountArgs) -> Result<(), CliError> {
    let (cipherdir, mountpoint) = (a.cipherdir.as_path(), a.mountpoint.as_path());
    let mut opts = MountOptions {
        allow_other: false,
        read_only: a.read_only,
        threads: a
            .threads
            .map(usize::from)
            .unwrap_or_else(default_request_threads),
    };
    for o in a
        .options
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        match o {
            "allow_other" => opts.allow_other = true,
            "ro" => opts.read_only = true,
            "rw" => opts.read_only = false,
            other => {
                return Err(CliError::new(
                    exit::ERROR,
                    format!("unknown mount option '{other}' (known: allow_other, ro, rw)"),
                ))
            }
        }
    }
    if !cipherdir.is_dir() || !Volume::looks_like_volume(cipherdir) {
        return Err(CliError::new(
            exit::BAD_VOLUME,
            format!(
                "{} is not a sealfs volume (no sealfs.toml); create one with 'sealfs init'",
                cipherdir.display()
            ),
        ));
    }
    check_mountpoint(mountpoint)?;
    let canonical_mp = mountpoint
        .canonicalize()
        .map_err(|e| CliError::new(exit::MOUNTPOINT, e.to_string()))?;
    let socket = a
        .ctl_socket
        .clone()
        .unwrap_or_else(|| ctl::default_socket_path(&canonical_mp));
    // Before any key is in memory; inherited by the daemonized child.
    let core_dumps = sealfs::hardening::disable_core_dumps();
    let s = read_secret(&a.secret, false)?;
    let vol = Arc::new(Volume::open(cipherdir, &s, opts.read_only)?);
    drop(s);
    raise_fd_limit();
    let cipherdir = cipherdir
        .canonicalize()
        .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;

    let mut ready_pipe: Option<std::fs::File> = None;
    if !a.foreground {
        let mut fds = [0; 2];
        // SAFETY: valid array for pipe().
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(CliError::new(exit::ERROR, "pipe failed"));
        }
        // SAFETY: single-threaded here; fork is safe before any thread starts.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(CliError::new(exit::ERROR, "fork failed"));
        }
        // SAFETY: fds come from pipe2 and are owned from here on.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if pid > 0 {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            if msg.starts_with("OK") {
                eprintln!(
                    "sealfs: mounted {} on {}; control socket {}",
                    cipherdir.display(),
                    mountpoint.display(),
                    socket.display()
                );
                return Ok(());
            }
            let msg = msg.strip_prefix("ERR ").unwrap_or(&msg).trim().to_string();
            let msg = if msg.is_empty() {
                "the mount daemon exited before the mount was ready".into()
            } else {
                msg
            };
            return Err(CliError::new(exit::ERROR, msg));
        }
        drop(r);
        // SAFETY: detaching from the controlling terminal.
        unsafe { libc::setsid() };
        ready_pipe = Some(std::fs::File::from(w));
    }
    init_logging_as(a.log_file.as_deref(), !a.foreground);
    if let Err(e) = core_dumps {
        tracing::warn!("cannot disable core dumps: {e}");
    }
    // Memory locks do not survive fork: taken here, in the serving process.
    match sealfs::hardening::lock_memory() {
        sealfs::hardening::MemoryLock::Locked => tracing::debug!("memory locked"),
        other => tracing::debug!("memory not locked: {other:?}"),
    }
    let fail = |pipe: &mut Option<std::fs::File>, msg: String| -> CliError {
        if let Some(p) = pipe.as_mut() {
            let _ = writeln!(p, "ERR {msg}");
        }
        CliError::new(exit::ERROR, msg)
    };
    // Before SealFs::new: it starts a thread (the release queue), and a
    // thread started with SIGTERM unblocked would take the signal's default
    // action (kill the daemon, leaving a dead mount) instead of unmounting.
    block_termination_signals();
    // SAFETY: geteuid has no failure mode.
    let owner = unsafe { libc::geteuid() };
    let grants = match sealfs::policy::grants::GrantStore::open(vol.clone()) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            return Err(fail(
                &mut ready_pipe,
                format!("cannot open the grant store: {e}"),
            ))
        }
    };
    let audit = if a.no_audit {
        None
    } else {
        match sealfs::policy::audit::AuditLog::open(
            vol.clone(),
            sealfs::policy::audit::DEFAULT_SEGMENT_BYTES,
        ) {
            Ok(l) => Some(l),
            Err(e) => {
                return Err(fail(
                    &mut ready_pipe,
                    format!(
                        "cannot open the audit log: {e} (mount with --no-audit to go without one)"
                    ),
                ))
            }
        }
    };
    let policy = Arc::new(sealfs::policy::AccessControl::new(
        owner,
        Some(grants),
        audit,
    ));
    let fs = match SealFs::new(vol.clone(), policy.clone()) {
        Ok(f) => f,
        Err(e) => {
            return Err(fail(
                &mut ready_pipe,
                format!("cannot open the volume's root: {e}"),
            ))
        }
    };
    let cache = fs.cache_control();
    let activity = fs.activity();
    let config = fuser_config(&cipherdir, &opts);
    let mut session = match fuser::Session::new(fs, mountpoint, &config) {
        Ok(s) => s,
        Err(e) => return Err(fail(&mut ready_pipe, format!("mount failed: {e}"))),
    };
    unmount_on_signal(session.unmount_callable(), canonical_mp.clone());
    sealfs::fs::raise_readahead(&canonical_mp, 1024);
    cache.set_notifier(session.notifier());
    let ctl_ctx = ctl::ControlContext::new(
        vol,
        Arc::new(cache),
        canonical_mp.clone(),
        owner,
        policy,
        opts.allow_other,
    );
    let _server = match ctl::serve(&socket, ctl_ctx.clone()) {
        Ok(s) => s,
        Err(e) => {
            let mut u = session.unmount_callable();
            let _ = u.unmount();
            return Err(fail(
                &mut ready_pipe,
                format!("control socket {}: {e}", socket.display()),
            ));
        }
    };
    ctl::spawn_scheduler(&ctl_ctx);
    ctl::spawn_grant_expiry(&ctl_ctx);
    tracing::info!(
        "mounted {} on {}; control socket {}",
        cipherdir.display(),
        canonical_mp.display(),
        socket.display()
    );
    if let Some(idle) = a.idle {
        unmount_when_idle(activity, idle, canonical_mp.clone());
    }
    if let Some(mut p) = ready_pipe.take() {
        let _ = writeln!(p, "OK");
        drop(p);
        // Detach stdio now that errors can no longer reach the caller.
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            use std::os::fd::AsRawFd;
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
    } else {
        eprintln!(
            "sealfs: mounted {} on {}; control socket {}",
            cipherdir.display(),
            mountpoint.display(),
            socket.display()
        );
    }
    match session.run() {
        Err(e)
            if e.raw_os_error() == Some(libc::ECONNABORTED)
                && UNMOUNT_REQUESTED.load(std::sync::atomic::Ordering::SeqCst) =>
        {
            tracing::info!("session ended after unmount ({e})");
            Ok(())
        }
        r => r.map_err(|e| CliError::new(exit::ERROR, format!("session ended with error: {e}"))),
    }
}

pub(crate) fn cmd_unmount(mp: &Path) -> Result<(), CliError> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mp)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err(CliError::new(
            exit::ERROR,
            format!("could not unmount {}", mp.display()),
        )),
        Err(_) => {
            let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())
                .map_err(|_| CliError::new(exit::ERROR, "bad path"))?;
            // SAFETY: valid C string.
            if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
                Ok(())
            } else {
                Err(CliError::new(
                    exit::ERROR,
                    format!(
                        "could not unmount {}: {}",
                        mp.display(),
                        std::io::Error::last_os_error()
                    ),
                ))
            }
        }
    }
}
