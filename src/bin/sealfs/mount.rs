//! `sealfs mount` (parse the options, unlock, daemonize, serve until
//! unmounted: [`sealfs::daemon::Mount`] does the mounting) and `sealfs
//! unmount`.
//!
//! Owns: daemonizing (fork, setsid, the ready pipe that carries `OK` or
//! `ERR message` back to the waiting parent, stdio detached once ready),
//! the `-o` options, and what `mount` prints.
//! Must never: assemble a mount itself (the builder does), or fork once a
//! thread runs.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sealfs::daemon::{mounts, Mount, MountError};

use crate::args::MountArgs;
use crate::error::{exit, CliError};
use crate::init_logging_as;
use crate::secret::read_unlock;

impl From<MountError> for CliError {
    fn from(e: MountError) -> Self {
        match e {
            MountError::Volume(v) => v.into(),
            MountError::Keys(k) => k.into(),
            MountError::NotAVolume(_) => CliError::new(exit::BAD_VOLUME, e.to_string()),
            MountError::MountPoint(_) => CliError::new(exit::MOUNTPOINT, e.to_string()),
            other => CliError::new(exit::ERROR, other.to_string()),
        }
    }
}

/// What `-o` gave.
pub(crate) struct MountOpts {
    pub(crate) allow_other: bool,
    pub(crate) read_only: bool,
    /// The kernel's generic options, passed through.
    pub(crate) generic: Vec<String>,
}

/// Every name `-o` takes.
pub(crate) fn known_options() -> String {
    let mut names = vec!["allow_other", "default_permissions"];
    names.extend(sealfs::fs::GENERIC_OPTIONS.iter().map(|(n, _)| *n));
    names.join(", ")
}

/// Parses `-o` options: allow_other, default_permissions (always on) and
/// the kernel's generic ones ([`sealfs::fs::GENERIC_OPTIONS`]); `suid` and
/// `dev` are refused (always nosuid,nodev), anything else is unknown.
pub(crate) fn parse_options(list: &str, mut read_only: bool) -> Result<MountOpts, CliError> {
    let mut allow_other = false;
    let mut generic = Vec::new();
    for o in list.split(',').filter(|s| !s.is_empty()) {
        match o {
            "allow_other" => allow_other = true,
            "default_permissions" => {}
            "ro" => read_only = true,
            "rw" => read_only = false,
            "suid" | "dev" => {
                return Err(CliError::new(
                    exit::ERROR,
                    format!("mount option '{o}' is refused: a sealfs mount is always nosuid,nodev"),
                ))
            }
            o if sealfs::fs::GENERIC_OPTIONS.iter().any(|(n, _)| *n == o) => {
                generic.push(o.to_string())
            }
            other => {
                return Err(CliError::new(
                    exit::ERROR,
                    format!(
                        "unknown mount option '{other}' (known: {})",
                        known_options()
                    ),
                ))
            }
        }
    }
    Ok(MountOpts {
        allow_other,
        read_only,
        generic,
    })
}

/// Where the daemon's log will go, checked before anything is mounted: a
/// `--log-file` that cannot be opened fails the mount; a daemonized mount
/// without one and without a syslog socket warns (its log would be lost).
fn check_log_target(a: &MountArgs) -> Result<(), CliError> {
    if let Some(p) = &a.log_file {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| {
                CliError::new(
                    exit::ERROR,
                    format!("cannot open the log file {}: {e}", p.display()),
                )
            })?;
    } else if !a.foreground {
        let path = std::env::var_os("SEALFS_SYSLOG_SOCKET")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| sealfs::logging::DEV_LOG.into());
        if sealfs::logging::Syslog::connect(&path, "sealfs").is_err() {
            eprintln!(
                "sealfs: warning: no syslog socket at {} (no journald or syslog daemon): the \
                 mount daemon's log will be lost; give --log-file FILE, or run it with \
                 --foreground",
                path.display()
            );
        }
    }
    Ok(())
}

pub(crate) fn cmd_mount(a: &MountArgs) -> Result<(), CliError> {
    let o = parse_options(a.options.as_deref().unwrap_or(""), a.read_only)?;
    check_log_target(a)?;
    let mut builder = Mount::builder(&a.cipherdir, &a.mountpoint)
        .read_only(o.read_only)
        .allow_other(o.allow_other)
        .generic_options(o.generic)
        .audit(!a.no_audit)
        .audit_host(a.host_id.clone())
        .idle(a.idle)
        .unmount_on_signal(true)
        .lock_memory(true);
    if let Some(n) = a.threads {
        builder = builder.threads(n.into());
    }
    builder = builder.enospc_margin(a.enospc_margin);
    if a.shared_storage {
        let d = sealfs::volume::SharedStorage::with_defaults();
        let shared = sealfs::volume::SharedStorage::new(
            a.host_id.clone().unwrap_or(d.host_id),
            a.shared_refresh.unwrap_or(d.refresh),
        )
        .map_err(|e| CliError::new(exit::ERROR, e))?;
        builder = builder.shared_storage(Some(shared));
    }
    if let Some(p) = &a.ctl_socket {
        builder = builder.ctl_socket(p);
    }
    // Before any key is in memory; inherited by the daemonized child.
    let core_dumps = sealfs::hardening::disable_core_dumps();
    let secret = a.secret.clone();
    let dir = a.cipherdir.clone();
    let opened = builder
        .accept_rollback(a.secret.accept_rollback)
        .unlock_with(move || read_unlock(&secret, &dir).map_err(|e| e.msg))
        .open()?;
    let cipherdir = opened.cipherdir().to_path_buf();
    let socket = opened.ctl_socket().to_path_buf();
    let mountpoint = a.mountpoint.as_path();
    let warnings = opened.warnings();
    for w in &warnings {
        eprintln!("sealfs: warning: {w}");
    }

    let mut ready_pipe: Option<std::fs::File> = None;
    if !a.foreground {
        let mut fds = [0; 2];
        // SAFETY: valid array for pipe().
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(CliError::new(exit::ERROR, "pipe failed"));
        }
        // SAFETY: single-threaded here (opening a mount starts no thread);
        // fork is safe before any thread starts.
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
            let (code, msg) = parse_err(&msg);
            // The daemon may have died with the kernel mount in place.
            let undone = undo_dead_mount(mountpoint, &cipherdir);
            let mut msg = if msg.is_empty() {
                "the mount daemon exited before the mount was ready (see its log)".into()
            } else {
                msg
            };
            if undone {
                msg.push_str(" (the mount it left behind was undone)");
            }
            return Err(CliError::new(code, msg));
        }
        drop(r);
        // SAFETY: detaching from the controlling terminal.
        unsafe { libc::setsid() };
        ready_pipe = Some(std::fs::File::from(w));
    }
    init_logging_as(a.log_file.as_deref(), !a.foreground);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = core_dumps {
        tracing::warn!("cannot disable core dumps: {e}");
    }
    let mount = match opened.start() {
        Ok(m) => m,
        Err(e) => {
            let e = CliError::from(e);
            if let Some(p) = ready_pipe.as_mut() {
                // The waiting parent prints it (once).
                let _ = writeln!(p, "ERR {} {}", e.code, e.msg);
                return Err(CliError::new(e.code, ""));
            }
            return Err(e);
        }
    };
    notify_ready();
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
    let r = mount.wait();
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
    Ok(r?)
}

/// `ERR CODE MESSAGE` from the ready pipe (or nothing: the daemon died).
fn parse_err(msg: &str) -> (u8, String) {
    let rest = msg.strip_prefix("ERR ").unwrap_or(msg).trim();
    match rest.split_once(' ') {
        Some((c, m)) if c.parse::<u8>().is_ok() => (c.parse().unwrap_or(exit::ERROR), m.into()),
        _ => (exit::ERROR, rest.into()),
    }
}

/// After a failed start: if the mount on top at `mp` is this volume's
/// (the daemon died after the kernel mount), detach it, so no
/// `Transport endpoint is not connected` stays behind. Returns whether
/// it did.
fn undo_dead_mount(mp: &Path, cipherdir: &Path) -> bool {
    let Ok(canon) = mp.canonicalize().or_else(|_| {
        // A dead FUSE mount cannot be stat'ed: resolve the parent.
        let parent = mp.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new(".")).canonicalize()?;
        Ok::<_, std::io::Error>(parent.join(mp.file_name().unwrap_or_default()))
    }) else {
        return false;
    };
    let ours = mounts::top_at(&canon)
        .is_some_and(|m| m.is_sealfs() && m.cipherdir().as_deref() == Some(cipherdir));
    ours && detach(&canon)
}

/// Lazily unmounts `mp` (fusermount3 -uz, or umount2 as root).
fn detach(mp: &Path) -> bool {
    let fm = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mp)
        .stderr(std::process::Stdio::null())
        .status();
    if matches!(fm, Ok(s) if s.success()) {
        return true;
    }
    let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: valid C string.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 }
}

/// Tells a service manager the mount is ready (`READY=1` to
/// `$NOTIFY_SOCKET`, a `Type=notify` unit); nothing without one.
fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("mounted"),
    ]) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Waits (bounded) until the daemon of `cipherdir` lets go of the
/// volume's lock: after the mount is gone it still records the unmount
/// and stores the keyring, and a command run right after `unmount` should
/// find the volume free.
fn wait_for_daemon(cipherdir: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(cipherdir.join(sealfs::volume::LOCK_FILE))
    else {
        return;
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < until {
        // SAFETY: flock on an fd we own; released right away.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // SAFETY: as above.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `mp` made absolute with symlinks resolved; a dead FUSE mount cannot
/// be stat'ed, so its parent is resolved instead.
fn canonical_mp(mp: &Path) -> Option<std::path::PathBuf> {
    mp.canonicalize().ok().or_else(|| {
        let parent = mp.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new(".")).canonicalize().ok()?;
        Some(parent.join(mp.file_name()?))
    })
}

/// "pid 123 (vim, 2 open)" for each process holding files under `mp`.
pub(crate) fn describe_holders(mp: &Path) -> Option<String> {
    let hs = mounts::holders(mp);
    if hs.is_empty() {
        return None;
    }
    let list: Vec<String> = hs
        .iter()
        .map(|h| {
            format!(
                "pid {} ({}, {} open)",
                h.pid,
                if h.command.is_empty() {
                    "?"
                } else {
                    &h.command
                },
                h.open
            )
        })
        .collect();
    Some(list.join(", "))
}

pub(crate) fn cmd_unmount(mp: &Path) -> Result<(), CliError> {
    let canon = canonical_mp(mp).ok_or_else(|| {
        CliError::new(
            exit::MOUNTPOINT,
            format!("{}: no such directory", mp.display()),
        )
    })?;
    let Some(top) = mounts::top_at(&canon) else {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!("{} is not mounted", mp.display()),
        ));
    };
    if !top.is_sealfs() {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!(
                "{} is a {} mount of {}, not a sealfs one: refusing to unmount it \
                 (use umount or fusermount3 -u)",
                mp.display(),
                top.fstype,
                top.source.to_string_lossy()
            ),
        ));
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&canon)
        .output();
    let done = match &out {
        Ok(o) => o.status.success(),
        Err(_) => std::ffi::CString::new(canon.as_os_str().as_encoded_bytes())
            // SAFETY: valid C string.
            .is_ok_and(|c| unsafe { libc::umount2(c.as_ptr(), 0) } == 0),
    };
    if done {
        if let Some(c) = top.cipherdir() {
            wait_for_daemon(&c);
        }
        return Ok(());
    }
    let why = match &out {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(_) => std::io::Error::last_os_error().to_string(),
    };
    let mut msg = format!("could not unmount {}", mp.display());
    if let Some(h) = describe_holders(&canon) {
        msg.push_str(&format!(
            ": it is busy, held by {h}; close those files (or unmount lazily: umount -l)"
        ));
    } else if !why.is_empty() {
        msg.push_str(&format!(": {}", why.trim_start_matches("fusermount3: ")));
    }
    Err(CliError::new(exit::ERROR, msg))
}
