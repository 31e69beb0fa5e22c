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

use sealfs::daemon::{Mount, MountError};

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

/// The `-o` options: allow_other, ro, rw. Returns (allow_other, read_only).
fn mount_options(a: &MountArgs) -> Result<(bool, bool), CliError> {
    let (mut allow_other, mut read_only) = (false, a.read_only);
    for o in a
        .options
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        match o {
            "allow_other" => allow_other = true,
            "ro" => read_only = true,
            "rw" => read_only = false,
            other => {
                return Err(CliError::new(
                    exit::ERROR,
                    format!("unknown mount option '{other}' (known: allow_other, ro, rw)"),
                ))
            }
        }
    }
    Ok((allow_other, read_only))
}

pub(crate) fn cmd_mount(a: &MountArgs) -> Result<(), CliError> {
    let (allow_other, read_only) = mount_options(a)?;
    let mut builder = Mount::builder(&a.cipherdir, &a.mountpoint)
        .read_only(read_only)
        .allow_other(allow_other)
        .audit(!a.no_audit)
        .idle(a.idle)
        .unmount_on_signal(true)
        .lock_memory(true);
    if let Some(n) = a.threads {
        builder = builder.threads(n.into());
    }
    builder = builder.enospc_margin(a.enospc_margin);
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
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = core_dumps {
        tracing::warn!("cannot disable core dumps: {e}");
    }
    let mount = match opened.start() {
        Ok(m) => m,
        Err(e) => {
            let msg = e.to_string();
            if let Some(p) = ready_pipe.as_mut() {
                let _ = writeln!(p, "ERR {msg}");
            }
            return Err(CliError::new(exit::ERROR, msg));
        }
    };
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
    Ok(mount.wait()?)
}

/// `\ooo` escapes of a /proc/mounts field, undone.
fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        let oct = f
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (f[i], oct) {
            (b'\\', Some(d)) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The cipher dir of the sealfs mount at `mp`, from /proc/self/mounts.
fn cipherdir_of(mp: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mp = mp.canonicalize().ok()?;
    let text = std::fs::read("/proc/self/mounts").ok()?;
    text.split(|&b| b == b'\n').find_map(|line| {
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if f.len() < 3 || unescape(f[1]) != mp.as_os_str().as_bytes() {
            return None;
        }
        let src = unescape(f[0]);
        let dir = src.strip_prefix(b"sealfs:")?.to_vec();
        Some(std::ffi::OsString::from_vec(dir).into())
    })
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

pub(crate) fn cmd_unmount(mp: &Path) -> Result<(), CliError> {
    let cipherdir = cipherdir_of(mp);
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mp)
        .status();
    if matches!(&status, Ok(s) if s.success()) {
        if let Some(c) = &cipherdir {
            wait_for_daemon(c);
        }
    }
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
